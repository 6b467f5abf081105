"""``busseg serve``: the web demo's API (FastAPI's TestClient), the default demo model, the
command line, and the page itself in headless Chromium (Debian's ``chromium`` driven by
selenium): upload a phantom and see the result, pick an example, bad uploads answered in the
page, one screenshot.

The served models are small fixed-weight networks registered here (dark regions are lesions;
the multi-task one calls large dark regions malignant), saved as real run folders and loaded
through the predictor API like any run."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from busseg.data import write_phantom_dataset
from busseg.engine.recipe import validate_recipe
from busseg.errors import ConfigError
from busseg.models import ModelOutput, list_models, register_model
from test_predict import write_dicom

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


class _DarkRegions(nn.Module):
    """Lesion logit high where the (min-max normalised) image is dark; with ``multitask``, the
    malignancy logit grows with the dark fraction of the image."""

    def __init__(self, in_channels: int = 1, multitask: bool = False) -> None:
        super().__init__()
        self.seg = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.cls = nn.Linear(1, 2) if multitask else None
        with torch.no_grad():
            self.seg.weight.fill_(-30.0 / (9 * in_channels))
            self.seg.bias.fill_(9.0)
            if self.cls is not None:
                self.cls.weight.copy_(torch.tensor([[-20.0], [20.0]]))
                self.cls.bias.zero_()

    def forward(self, x):
        seg = self.seg(x)
        cls = None if self.cls is None else self.cls(torch.sigmoid(seg).mean((2, 3)) - 0.05)
        return ModelOutput(seg=seg, cls=cls)


if "serve_dark" not in list_models():
    @register_model("serve_dark", paper="test fixture", size_divisor=1)
    def _dark(in_channels=1, encoder_weights="none"):
        return _DarkRegions(in_channels)

    @register_model("serve_dark_mt", paper="test fixture", size_divisor=1, multitask=True)
    def _dark_mt(in_channels=1, encoder_weights="none"):
        return _DarkRegions(in_channels, multitask=True)


def make_run(root: Path, model: str) -> Path:
    """A finished run folder as ``busseg train`` writes it (result.json naming the checkpoint)."""
    from busseg.engine.task import build_model_from_recipe

    recipe = validate_recipe({"model": model, "image_size": 64, "normalization": "minmax"}, "test")
    net = build_model_from_recipe(recipe)
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"recipe": recipe},
                "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}},
               root / "checkpoints" / "best.ckpt")
    (root / "result.json").write_text(json.dumps({"fold": 0, "best_checkpoint": "checkpoints/best.ckpt"}))
    return root


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    phantoms = write_phantom_dataset(base / "phantoms", n=4, image_size=96, seed=3)
    scans = sorted((phantoms / "images").glob("*.png"))
    bad = base / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("this is a text file, not a scan\n")
    (bad / "empty.png").write_bytes(b"")
    (bad / "huge.png").write_bytes(os.urandom(1_200_000))  # over the 1 MB limit the tests set
    gray = np.asarray(Image.open(scans[0]).convert("L"))
    dicom = write_dicom(base / "scan.dcm", gray, spacing=(0.1, 0.2))
    return {"base": base, "scans": scans, "bad": bad, "dicom": dicom,
            "run": make_run(base / "run", "serve_dark"), "run_mt": make_run(base / "run_mt", "serve_dark_mt")}


@pytest.fixture(scope="module")
def client(files):
    from fastapi.testclient import TestClient

    from busseg.serve.app import create_app
    from busseg.serve.model import load_model

    app = create_app(load_model(files["run_mt"]), examples=files["scans"][:2], max_upload_bytes=1_000_000,
                     max_pixels=200_000)
    return TestClient(app)


def _upload(client, path: Path, **form):
    with open(path, "rb") as fh:
        return client.post("/api/predict", files={"file": (path.name, fh.read(), "application/octet-stream")},
                           data=form)


# ----------------------------------------------------------------------------------- the API


def test_info_describes_the_model_and_the_examples(client, files):
    info = client.get("/api/info").json()
    assert "serve_dark_mt" in info["model"] and info["segments"] and info["classifies"]
    assert info["examples"] == [p.name for p in files["scans"][:2]]
    assert client.get(f"/api/examples/{info['examples'][0]}").content == files["scans"][0].read_bytes()
    assert client.get("/").text.startswith("<!DOCTYPE html>")


def test_upload_returns_what_the_predictor_returns(client, files):
    from busseg.serve.model import load_model

    scan = files["scans"][1]
    answer = _upload(client, scan).json()
    expected = load_model(files["run_mt"])(scan)
    mask = decode(answer["mask"]) > 0
    assert mask.shape == expected.mask.shape == (96, 96)
    assert np.array_equal(mask, expected.mask) and mask.any()
    assert answer["raw_measurements"]["area_px"] == int(mask.sum())
    assert decode(answer["overlay"]).shape == (96, 96, 3) and decode(answer["heatmap"]).shape == (96, 96, 3)
    assert answer["class_probabilities"]["malignant"] == pytest.approx(expected.class_probabilities["malignant"])
    assert sum(answer["class_probabilities"].values()) == pytest.approx(1.0)
    assert answer["predicted_class"] in ("benign", "malignant")
    labels = [row["label"] for row in answer["measurements"]]
    assert labels[0] == "Lesion" and labels[1].startswith("Area") and labels[2] == "Maximum diameter"
    assert answer["mask_filename"] == f"{scan.stem}_mask.png"


def test_example_and_tta_and_given_spacing(client, files):
    name = files["scans"][0].name
    plain = client.post("/api/predict", data={"example": name}).json()
    flipped = client.post("/api/predict", data={"example": name, "tta": "true", "spacing": "0.1"}).json()
    assert plain["name"] == name and not plain["tta"] and flipped["tta"] and "TTA" in flipped["model"]
    assert flipped["spacing_mm"] == [0.1, 0.1] and flipped["spacing_source"] == "given"
    area = next(r["value"] for r in flipped["measurements"] if r["label"].startswith("Area"))
    assert "mm²" in area


def test_dicom_upload_brings_its_pixel_spacing(client, files):
    answer = _upload(client, files["dicom"], spacing="0.5").json()
    assert answer["spacing_mm"] == [0.1, 0.2] and answer["spacing_source"] == "file"  # the file's own wins
    assert answer["raw_measurements"]["area_mm2"] == pytest.approx(answer["raw_measurements"]["area_px"] * 0.02)


@pytest.mark.parametrize("name, status, words", [
    ("notes.png", 415, ["notes.png", "not a readable image"]),
    ("empty.png", 400, ["empty.png is empty (0 bytes)"]),
    ("huge.png", 413, ["huge.png is larger than 1.0 MB"]),
])
def test_bad_uploads_get_one_clear_message(client, files, name, status, words):
    response = _upload(client, files["bad"] / name)
    assert response.status_code == status
    message = response.json()["error"]
    assert all(w in message for w in words), message
    assert "Traceback" not in message and str(files["base"]) not in message and "busseg-serve-" not in message


def test_other_refusals(client, files):
    big = files["base"] / "big.png"
    Image.fromarray(np.zeros((500, 500), np.uint8)).save(big)  # 250 000 px > the 200 000 set here
    assert _upload(client, big).status_code == 413
    assert "500 × 500 pixels" in _upload(client, big).json()["error"]
    assert client.post("/api/predict").json()["error"].startswith("no scan received")
    assert client.post("/api/predict", data={"example": "nope.png"}).status_code == 404
    bad_spacing = client.post("/api/predict", data={"example": files["scans"][0].name, "spacing": "-1"})
    assert bad_spacing.status_code == 400 and "spacing" in bad_spacing.json()["error"]
    oversized = client.post("/api/predict", content=b"x" * 10, headers={"content-length": str(50_000_000),
                                                                        "content-type": "multipart/form-data"})
    assert oversized.status_code == 413


def test_onnx_file_is_served_like_its_run(files):
    from busseg.inference.export import export_onnx
    from busseg.models.checkpoint import load_checkpoint
    from busseg.serve.model import load_model

    net, recipe = load_checkpoint(files["run"] / "checkpoints" / "best.ckpt", "serve_dark")
    onnx_file = files["base"] / "dark.onnx"
    export_onnx(net, recipe, onnx_file)
    scan = files["scans"][2]
    from_onnx, from_run = load_model(onnx_file)(scan), load_model(files["run"])(scan)
    assert "onnx" in load_model(onnx_file).describe()
    assert np.abs(from_onnx.probability - from_run.probability).max() < 1e-4


# ----------------------------------------------------------------------- the default model


def test_demo_model_is_trained_once_when_missing(tmp_path, monkeypatch):
    import busseg.demo
    from busseg.serve import model as served

    calls = []
    original = busseg.demo.run_demo

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(busseg.demo, "run_demo", counting)
    with pytest.raises(ConfigError, match="busseg demo"):
        served.demo_model(tmp_path / "demo", train_if_missing=False)
    options = dict(n_phantoms=20, image_size=32, epochs=1)
    run = served.demo_model(tmp_path / "demo", **options)
    assert (run / "result.json").is_file() and run.name == "unet_fold0" and len(calls) == 1
    assert served.demo_model(tmp_path / "demo", **options) == run and len(calls) == 1
    assert served.load_model(run)(served.example_images(n=1)[0]).mask is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 120.0, process: subprocess.Popen | None = None) -> dict:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            return httpx.get(url, timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_cli_serves_the_demo_model_without_arguments(tmp_path):
    import httpx

    from busseg.serve.model import demo_model

    demo_dir = tmp_path / "demo"
    demo_model(demo_dir, n_phantoms=20, image_size=32, epochs=1)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "BUSSEG_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "busseg.cli.main", "serve", "--demo-dir", str(demo_dir),
                                "--port", str(port)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        info = _wait_for(f"http://127.0.0.1:{port}/api/info", process=process)
        assert info["model"].startswith("unet") and len(info["examples"]) == 4
        answer = httpx.post(f"http://127.0.0.1:{port}/api/predict", data={"example": info["examples"][0]},
                            timeout=60).json()
        assert decode(answer["mask"]).shape == (answer["height"], answer["width"])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_refuses_a_taken_port_before_loading_anything(tmp_path, capsys):
    from busseg.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path / "no_such_run"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ----------------------------------------------------------------- the page, in Chromium


@pytest.fixture(scope="module")
def server(files):
    """The demo app serving the multi-task model, in a uvicorn thread of this process."""
    import uvicorn

    from busseg.serve.app import create_app
    from busseg.serve.model import load_model

    app = create_app(load_model(files["run_mt"]), examples=files["scans"], max_upload_bytes=1_000_000)
    port = _free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    _wait_for(f"http://127.0.0.1:{port}/api/info", 60)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never skipped: `make test` (.ci/run) installs Debian's chromium and chromium-driver.
    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), (
        "the browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium "
        "chromium-driver); `make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def _wait_result_or_error(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "result").is_displayed()
                                     or d.find_element(By.ID, "error").is_displayed())


def _upload_in_page(browser, path: Path):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait_result_or_error(browser)


def test_page_upload_shows_overlay_heatmap_class_and_measurements(browser, server, files):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    assert "serve_dark_mt" in browser.find_element(By.ID, "model").text
    scan = files["scans"][1]
    _upload_in_page(browser, scan)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert scan.name in browser.find_element(By.ID, "result-title").text
    for image in ("image", "overlay", "heatmap"):
        element = browser.find_element(By.ID, image)
        assert element.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", element) == 96
    assert "probability of malignancy" in browser.find_element(By.ID, "class-text").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#measurements tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows][0] == "Lesion" and len(rows) >= 6
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == f"{scan.stem}_mask.png"
    page_mask = decode(link.get_attribute("href")) > 0
    from busseg.serve.model import load_model

    assert np.array_equal(page_mask, load_model(files["run_mt"])(scan).mask)


def test_page_example_click(browser, server, files):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    buttons = browser.find_elements(By.CSS_SELECTOR, "#examples button")
    assert len(buttons) == len(files["scans"])
    buttons[2].click()
    _wait_result_or_error(browser)
    assert files["scans"][2].name in browser.find_element(By.ID, "result-title").text


@pytest.mark.parametrize("name, words", [
    ("notes.png", "notes.png: not a readable image"),
    ("empty.png", "empty.png is empty (0 bytes)"),
    ("huge.png", "huge.png is larger than 1.0 MB"),
])
def test_page_bad_uploads_show_a_clear_message(browser, server, files, name, words):
    from selenium.webdriver.common.by import By

    _open(browser, server)
    _upload_in_page(browser, files["bad"] / name)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and words in error.text, error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert "Traceback" not in browser.page_source


def test_page_screenshot(browser, server, files, tmp_path):
    _open(browser, server)
    _upload_in_page(browser, files["scans"][0])
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1000, 1280) or pixels.shape[1] == 1280
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    amber = ((red - blue > 60) & (green - blue > 40)).sum()  # the mask colour blended over grey
    assert amber > 200, "the overlay is not visible in the screenshot"
    keep = os.environ.get("BUSSEG_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "serve.png")
