"""A tiny benchmark end to end: 3 tiny models × 2 folds on tiny phantoms, a cross-dataset
evaluation, the report recomputed from the per-image CSVs, re-runs, the CLI, the leakage study."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.nn as nn
from scipy import stats

from busseg.cli.main import main
from busseg.data import write_phantom_dataset
from busseg.engine.recipe import save_recipe, validate_recipe
from busseg.errors import ConfigError
from busseg.models import ModelOutput, list_models, register_model
from busseg.report.benchmark import QUICK_LABEL, benchmark_recipe, resolve_protocol, run_benchmark
from busseg.report.compose import build_report
from busseg.report.leakage import leakage_study


class _TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 8, multitask: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)
        self.cls = nn.Linear(width, 2) if multitask else None

    def forward(self, x):
        f = self.body(x)
        return ModelOutput(seg=self.head(f), cls=self.cls(f.mean((2, 3))) if self.cls is not None else None)


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        raise RuntimeError("this model is broken on purpose")


if "bench_small" not in list_models():
    @register_model("bench_small", paper="test fixture", recipe="bench_small", size_divisor=8)
    def _small(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, 4)

    @register_model("bench_wide", paper="test fixture", recipe="bench_wide", size_divisor=8)
    def _wide(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, 12)

    @register_model("bench_multi", paper="test fixture", recipe="bench_multi", size_divisor=8, multitask=True)
    def _multi(in_channels=1, encoder_weights="none"):
        return _TinyNet(in_channels, 8, multitask=True)

    @register_model("bench_broken", paper="test fixture", recipe="bench_broken", size_divisor=8)
    def _broken(in_channels=1, encoder_weights="none"):
        return _Broken()

MODELS = ["bench_small", "bench_wide", "bench_multi"]
PROTOCOL = {"image_size": 32, "epochs": 3, "batch_size": 2, "encoder_weights": "none", "cv_folds": 2,
            "augmentation": {"hflip": 0.5}}
QUIET = dict(progress=False, accelerator="cpu")


def tiny_recipe(model: str) -> dict:
    return validate_recipe({
        "model": model, "optimizer": {"name": "adam", "lr": 0.01},
        # the soft Dice loss lets a 4-channel net find the phantoms' lesions within a few steps
        "loss": {"name": "multitask", "segmentation": {"name": "segmentation", "pixel": "dice"}}
        if model == "bench_multi" else {"name": "segmentation", "pixel": "dice"},
    }, "test")


RECIPES = {m: tiny_recipe(m) for m in MODELS + ["bench_broken"]}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    other = write_phantom_dataset(base / "other_phantoms", n=6, image_size=32, seed=11)
    out = base / "results"
    record = run_benchmark(out, MODELS, dataset="phantom", data_options={"n": 24}, protocol=PROTOCOL,
                           recipes={m: RECIPES[m] for m in MODELS}, cross=[("folder", str(other))],
                           corruptions=["gain", "annotations"], **QUIET)
    return out, record


def _numbers(out: Path) -> dict:
    return json.loads((out / "report_numbers.json").read_text())


def test_results_folder_layout_and_one_shared_split(bench):
    out, record = bench
    assert record["failed"] == []
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["protocol"]["fields"]["epochs"] == 3 and meta["datasets"]["phantom"]["k"] == 2
    shared = json.loads((out / "phantom" / "split.json").read_text())
    for model in MODELS:
        cv = out / "phantom" / model
        assert json.loads((cv / "split.json").read_text())["folds"] == shared["folds"]
        for fold in (0, 1):
            assert json.loads((cv / f"fold_{fold}" / "split.json").read_text())["folds"] == shared["folds"]
            assert (cv / f"fold_{fold}" / "result.json").is_file()
        assert (cv / "cross" / "folder" / "per_image.csv").is_file()
    complexity = json.loads((out / "complexity.json").read_text())
    assert complexity["bench_wide"]["parameters"] > complexity["bench_small"]["parameters"] > 0
    assert complexity["bench_small"]["image_size"] == 256 and complexity["bench_small"]["gflops"] > 0
    for name in ("report.md", "report.html", "figures/phantom_cd_diagram.png", "figures/phantom_dice_boxplot.png",
                 "figures/phantom_qualitative.png", "figures/phantom_training_curves.png"):
        assert (out / name).is_file(), name


def test_report_states_the_scoring_geometry(bench):
    out, _ = bench
    numbers = _numbers(out)["datasets"]["phantom"]
    assert set(numbers["geometry"].values()) == {"original"}
    assert "Scored in each image's original geometry" in (out / "report.md").read_text()


def test_main_table_is_recomputed_from_the_per_image_csvs(bench):
    out, _ = bench
    numbers = _numbers(out)["datasets"]["phantom"]["segmentation"]
    report = (out / "report.md").read_text()
    for model in MODELS:
        frame = pd.read_csv(out / "phantom" / model / "cv_per_image.csv")
        engine = json.loads((out / "phantom" / model / "cv_summary.json").read_text())["segmentation"]
        assert numbers[model]["n_images"] == len(frame) == 24
        for metric in ("dice", "iou", "precision", "recall", "specificity", "accuracy", "hd95", "asd"):
            per_fold = [frame[frame["fold"] == f][metric].mean() for f in (0, 1)]
            ours = numbers[model][metric]
            assert ours["folds"] == pytest.approx(per_fold)
            assert ours["mean"] == pytest.approx(np.mean(per_fold))
            assert ours["std"] == pytest.approx(np.std(per_fold, ddof=1))
            assert ours["mean"] == pytest.approx(engine[metric]["mean"])  # the engine's own summary agrees
            assert ours["std"] == pytest.approx(engine[metric]["std"])
        row = next(line for line in report.splitlines() if line.startswith(f"| {model} | 2 | 24 |"))
        dice = f"{numbers[model]['dice']['mean'] * 100:.2f} ± {numbers[model]['dice']['std'] * 100:.2f}"
        assert dice in row
    best = max(MODELS, key=lambda m: round(numbers[m]["dice"]["mean"] * 100, 2))
    best_row = next(line for line in report.splitlines() if line.startswith(f"| {best} | 2 | 24 |"))
    assert best_row.split(" | ")[3].startswith("**")  # best Dice in bold
    # by class, classification and cross-dataset numbers come from the same CSVs
    frame = pd.read_csv(out / "phantom" / "bench_small" / "cv_per_image.csv")
    benign = frame[frame["label"] == "benign"]
    by_class = _numbers(out)["datasets"]["phantom"]["by_class"]["bench_small"]["benign"]["dice"]
    assert by_class["mean"] == pytest.approx(benign.groupby("fold")["dice"].mean().mean())
    classification = _numbers(out)["datasets"]["phantom"]["classification"]
    assert list(classification) == ["bench_multi"]
    cross_numbers = _numbers(out)["datasets"]["phantom"]["cross"]["folder"]
    cross_engine = json.loads((out / "phantom" / "bench_wide" / "cross" / "folder" / "summary.json").read_text())
    assert cross_numbers["bench_wide"]["dice"]["mean"] == pytest.approx(cross_engine["segmentation"]["dice"]["mean"])
    assert cross_numbers["bench_wide"]["n_images"] == 6 and cross_numbers["bench_wide"]["n_models"] == 2


def test_report_statistics_match_scipy_on_the_csvs(bench):
    out, _ = bench
    dice = pd.DataFrame({m: pd.read_csv(out / "phantom" / m / "cv_per_image.csv", dtype={"id": str}).set_index("id")["dice"]
                         for m in MODELS})
    numbers = _numbers(out)["datasets"]["phantom"]
    reference = dice.mean().idxmax()
    for test in numbers["paired_tests"]:
        assert test["reference"] == reference
        if (dice[test["model"]] == dice[reference]).all():
            assert test["t_pvalue"] == 1.0
        else:
            assert test["t_pvalue"] == pytest.approx(stats.ttest_rel(dice[test["model"]], dice[reference]).pvalue)
    fn = numbers["friedman_nemenyi"]
    ranks = stats.rankdata(-dice.to_numpy(), axis=1).mean(axis=0)
    assert [fn["average_ranks"][m] for m in MODELS] == pytest.approx(list(ranks))


def test_html_report_is_self_contained(bench):
    out, _ = bench
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)  # + 2 robustness figures
    assert QUICK_LABEL not in page  # not the quick protocol
    assert 'href="phantom/split.json"' in page and 'href="phantom/bench_small/fold_0/recipe.yaml"' in page


def test_rerun_skips_finished_runs_and_refuses_another_protocol(bench):
    out, _ = bench
    result_file = out / "phantom" / "bench_small" / "fold_0" / "result.json"
    before = result_file.stat().st_mtime_ns
    record = run_benchmark(out, MODELS[:2], dataset="phantom", data_options={"n": 24}, protocol=PROTOCOL,
                           recipes={m: RECIPES[m] for m in MODELS[:2]}, complexity=False, report=False, **QUIET)
    assert all(s["cv"] == "already finished (skipped)" for s in record["status"].values())
    assert result_file.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="one folder = one protocol"):
        run_benchmark(out, MODELS[:1], dataset="phantom", data_options={"n": 24}, protocol={**PROTOCOL, "epochs": 4},
                      recipes={MODELS[0]: RECIPES[MODELS[0]]}, **QUIET)


def test_report_rebuilds_identically_with_chosen_cases(bench):
    out, _ = bench
    before = _numbers(out)
    ids = pd.read_csv(out / "phantom" / "bench_small" / "cv_per_image.csv", dtype={"id": str})["id"].tolist()[:2]
    build_report(out, cases=ids)
    assert _numbers(out) == before
    assert "Qualitative grid not drawn" not in (out / "report.md").read_text()
    build_report(out, cases=["no_such_image"])
    assert "Qualitative grid not drawn: qualitative cases ['no_such_image']" in (out / "report.md").read_text()


def test_report_has_the_robustness_table_plot_and_corruption_grid(bench):
    out, _ = bench
    report = (out / "report.md").read_text()
    assert "Robustness to scanner-like corruptions" in report and "not a second site" in report
    assert (out / "figures" / "phantom_robustness.png").is_file()
    assert (out / "figures" / "phantom_corruptions.png").is_file()
    numbers = _numbers(out)["datasets"]["phantom"]["robustness"]
    assert set(numbers) == set(MODELS)
    for model in MODELS:
        df = pd.read_csv(out / "phantom" / model / "robustness" / "per_image.csv")
        assert sorted(df["fold"].unique()) == [0, 1]
        clean = df[df["corruption"] == "none"]
        # every test image of the cross-validation, once, scored clean
        cv = pd.read_csv(out / "phantom" / model / "cv_per_image.csv")
        assert sorted(clean["id"]) == sorted(cv["id"])
        assert numbers[model]["clean_dice"] == pytest.approx(clean["dice"].mean())
        assert numbers[model]["mean_corruption_dice"] == pytest.approx(df[df["corruption"] != "none"]["dice"].mean())
        assert f"| {model} |" in report.split("Robustness to scanner-like corruptions")[1]


def test_protocols():
    quick = resolve_protocol("quick", ["epochs=1"])
    recipe = benchmark_recipe("bench_small", quick, k=2, base=RECIPES["bench_small"])
    assert recipe["image_size"] == 128 and recipe["epochs"] == 1 and recipe["cv_folds"] == 2
    assert recipe["augmentation"]["hflip"] == 0.5 and recipe["encoder_weights"] == "none"
    assert recipe["optimizer"]["lr"] == 0.01  # the method's optimiser is kept
    assert recipe["precise_bn"] == {"batches": 32}  # scored with statistics of the final weights
    with pytest.raises(ConfigError, match="neither 'paper', 'quick'"):
        resolve_protocol("fast")
    # a model option no model accepts is refused while planning, before the first model trains
    from busseg.report.benchmark import plan_benchmark

    with pytest.raises(ConfigError, match=r"no option\(s\) \['widht'\]"):
        plan_benchmark(["bench_small"], resolve_protocol("quick", ["model_options={widht: 4}"]), k=2,
                       recipes={"bench_small": RECIPES["bench_small"]})


def test_quick_protocol_puts_every_model_on_one_image_set():
    """attention_unet_plus trains on BUSI's normal images too (Guo section 3); one shared split
    needs one image set, which the quick protocol fixes and the paper protocol asks for."""
    from busseg.report.benchmark import plan_benchmark

    planned = plan_benchmark(["unet", "attention_unet_plus"], resolve_protocol("quick"))
    assert {r["include_normal"] for r in planned.values()} == {False}
    with pytest.raises(ConfigError, match="include_normal"):
        plan_benchmark(["unet", "attention_unet_plus"], resolve_protocol("paper"))


def test_cli_quick_run_labels_the_report_and_records_failures(tmp_path, capsys):
    recipe_file = tmp_path / "small.yaml"
    save_recipe(RECIPES["bench_small"], recipe_file)
    broken_file = tmp_path / "broken.yaml"
    save_recipe(RECIPES["bench_broken"], broken_file)
    out = tmp_path / "quick"
    code = main(["benchmark", "run", "--out", str(out), "--dataset", "phantom", "--n-phantoms", "12", "--quick",
                 "--models", "bench_small", "bench_broken", "--recipe", f"bench_small={recipe_file}",
                 "--recipe", f"bench_broken={broken_file}", "--set", "image_size=32", "--set", "epochs=1", "--set", "batch_size=2",
                 "--k", "2", "--no-complexity", "--accelerator", "cpu", "--no-progress"])
    assert code == 1  # one model failed; the other finished and is reported
    printed = capsys.readouterr().out
    assert "bench_broken: FAILED RuntimeError" in printed
    report = (out / "report.md").read_text()
    assert QUICK_LABEL in report
    assert "| bench_small | 2 | 12 |" in report
    assert "bench_broken: RuntimeError: this model is broken on purpose" in report
    assert main(["benchmark", "report", str(out), "--no-qualitative"]) == 0
    assert main(["benchmark", "report", str(tmp_path)]) == 2  # not a results folder: a clean error


def test_leakage_study_counts_leaks_and_compares(tmp_path):
    data = write_phantom_dataset(tmp_path / "dups", n=12, image_size=32, seed=4)
    labels = (data / "labels.csv").read_text().splitlines()
    for i in range(4):  # exact copies: the audit puts each with its original
        src = f"phantom_{i:04d}"
        for sub in ("images", "masks"):
            shutil.copy(data / sub / f"{src}.png", data / sub / f"copy_{i}.png")
        labels.append(f"copy_{i},{labels[i + 1].split(',')[1]}")
    (data / "labels.csv").write_text("\n".join(labels) + "\n")
    out = tmp_path / "leak"
    meta = leakage_study(out, ["bench_small"], dataset="folder", root=str(data),
                         protocol={**PROTOCOL, "epochs": 1, "cv_folds": 2}, recipes={"bench_small": RECIPES["bench_small"]},
                         **QUIET)
    assert meta["n_clustered_images"] == 8
    assert meta["splits"]["grouped"]["leaked_test_images"] == 0
    assert meta["splits"]["random"]["leaked_test_images"] > 0
    result = meta["models"]["bench_small"]
    random_dice = pd.read_csv(out / "bench_small" / "random" / "cv_per_image.csv").groupby("fold")["dice"].mean().mean()
    grouped_dice = pd.read_csv(out / "bench_small" / "grouped" / "cv_per_image.csv").groupby("fold")["dice"].mean().mean()
    assert result["difference"]["dice"] == pytest.approx(random_dice - grouped_dice)
    assert result["all_images"]["n"] == 16
    assert "random − grouped" in (out / "leakage.md").read_text()


def test_claims_section_sets_paper_figures_beside_measured_ones(bench):
    from busseg.report.claims import load_claims

    out, _ = bench
    claims = {"bench_small": {**load_claims()["acsnet"], "source": "Table 5 (test claim)"},
              "bench_unrun": load_claims()["elad_net"]}
    build_report(out, qualitative=False, claims=claims)
    entries = {e["model"]: e for e in _numbers(out)["claims"]}
    measured = entries["bench_small"]["measured"]
    per_image = pd.read_csv(out / "phantom" / "bench_small" / "cv_per_image.csv")
    assert measured["dice"]["mean"] == pytest.approx(per_image.groupby("fold")["dice"].mean().mean() * 100)
    aspects = {row[0]: row for row in entries["bench_small"]["differences"]}
    # the results folder's own protocol is read back: quick recipe, 2 grouped folds, 3 epochs, phantoms
    assert aspects["Data"][2].startswith("busseg measured on phantom")
    assert aspects["Folds"][1:3] == ["5-fold", "2-fold"]
    assert aspects["Epochs"][2].startswith("3 (ran") and "grouped 2-fold" in aspects["Split"][2]
    assert "test fold" in aspects["Model selection"][1] and aspects["HD95 unit"][1].startswith("mm")
    assert entries["bench_unrun"]["measured"] is None
    report = (out / "report.md").read_text()
    assert "Claims: each paper's figures beside busseg's" in report and "paper: Table 5 (test claim)" in report
    assert "| bench_small | Δ (busseg − paper) |" in report
    build_report(out, qualitative=False)  # the packaged claims: none of these models has one
    assert [e["measured"] for e in _numbers(out)["claims"]] == [None] * 5
