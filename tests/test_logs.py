"""Logs a person can read: the captured output of a tiny training run (a pipe, not a terminal)
holds each library message once, no advertisement, no progress-bar frames, and one line per
epoch; ``export`` prints no onnxscript chatter."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from busseg.console import progress_bar

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _busseg(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "BUSSEG_OFFLINE": "1", "OMP_NUM_THREADS": "1", "BUSSEG_CACHE_DIR": str(cwd / "cache")}
    done = subprocess.run([sys.executable, "-m", "busseg.cli.main", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout
    return done.stdout


TRAIN = ("train", "--model", "unet", "--set", "model_options.base_channels=4", "--image-size", "32",
         "--epochs", "3", "--batch-size", "4", "--n-phantoms", "16", "--accelerator", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("logs")
    logs = {"bar": _busseg(*TRAIN, "--out", str(base / "bar"), cwd=base),
            "no_progress": _busseg(*TRAIN, "--no-progress", "--out", str(base / "quiet"), cwd=base)}
    return base, logs


@pytest.mark.parametrize("kind", ["bar", "no_progress"])
def test_training_log_is_plain_and_says_everything_once(runs, kind):
    log = runs[1][kind]
    assert "\r" not in log and "\x1b[" not in log  # no progress-bar frames, no cursor movement
    assert "litlogger" not in log and "litmodels" not in log and "Tip" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated
    assert sum("GPU available" in line for line in lines) == 1


@pytest.mark.parametrize("kind", ["bar", "no_progress"])
def test_one_line_per_epoch_with_losses_metrics_time_and_eta(runs, kind):
    log = runs[1][kind]
    epochs = [line for line in log.splitlines() if re.search(r"epoch \d+/3\b", line)]
    assert len(epochs) == 3, log
    for number, line in enumerate(epochs, start=1):
        assert f"epoch {number}/3" in line
        for field in ("train_loss", "val_loss", "val_dice"):
            assert re.search(rf"{field} \d+\.\d+", line), line
        assert re.search(r"\d+(\.\d+)? s\b", line) and "ETA" in line, line
    assert "ETA 0 s" in epochs[-1]


def test_export_prints_no_onnxscript_info_lines(runs):
    base, _ = runs
    log = _busseg("export", str(base / "quiet"), "--out", str(base / "model.onnx"), cwd=base)
    assert "onnxscript" not in log and "onnx_ir" not in log, log
    assert len([line for line in log.splitlines() if line.strip()]) <= 2, log


def test_progress_without_a_terminal_writes_plain_lines():
    stream = io.StringIO()  # not a terminal
    with progress_bar(total=5, desc="decoding 5 images", unit="img", stream=stream, interval=0.0) as bar:
        for _ in range(5):
            bar.update(1)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("decoding 5 images: ") for line in lines)
    assert "5/5" in lines[-1]


def test_progress_without_a_terminal_stays_quiet_for_a_short_stage():
    stream = io.StringIO()
    for _ in progress_bar(range(100), desc="auditing", unit="img", stream=stream, interval=60.0):
        pass
    assert stream.getvalue() == ""  # a stage shorter than the interval: its summary line is the caller's


def test_progress_goes_through_the_console_module_only():
    """Every progress display is ``busseg.console.progress_bar``: a tqdm bar only on a terminal,
    plain lines in a log. A module creating its own tqdm bar writes ``\\r`` frames into logs
    (the robustness benchmark and the crop search did)."""
    import re
    from pathlib import Path

    import busseg

    package = Path(busseg.__file__).parent
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if path.name != "console.py" and re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.M)]
    assert not offenders, f"modules drawing their own tqdm bars: {offenders}"
