"""Every ``busseg`` sub-command (and nested action) answers ``--help``."""

from __future__ import annotations

import argparse

import pytest

from busseg.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


COMMANDS = list(_commands(build_parser()))


def test_the_expected_commands_exist():
    top = {c[0] for c in COMMANDS}
    assert top >= {"data", "models", "train", "cv", "evaluate", "predict", "export", "benchmark", "demo"}
    assert ("data", "audit") in COMMANDS and ("benchmark", "leakage") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: busseg " + " ".join(command))


# Options a command cannot honour in the given combination are refused (exit 2, one line),
# before any work, never silently ignored. {file}: an existing file; {tmp}: a scratch folder.
UNHONOURED = [
    (["export", "{file}", "--out", "{tmp}/m.onnx", "--set", "image_size=128"],
     r"--set .*registered model"),
    (["export", "{file}", "--out", "{tmp}/m.onnx", "--encoder-weights", "imagenet"],
     r"--encoder-weights .*registered model"),
    (["export", "unet", "--out", "{tmp}/m.onnx", "--fold", "1"], r"--fold .*cv folder"),
    (["export", "unet", "--out", "{tmp}/m.onnx", "--calibration", "phantoms"], r"--calibration .*--quantize"),
    (["export", "unet", "--out", "{tmp}/m.onnx", "--calibration-count", "4"], r"--calibration-count .*--quantize"),
    (["export", "unet", "--out", "{tmp}/m.onnx", "--min-dice", "0.5"], r"--min-dice .*--quantize"),
    (["predict", "{file}", "--onnx", "{file}", "--fold", "0", "--out", "{tmp}/p"], r"--fold .*--onnx"),
    (["evaluate", "{file}", "--ensemble", "--out", "{tmp}/e"], r"--ensemble .*several"),
    (["train", "--model", "unet", "--dataset", "busi", "--root", "{tmp}", "--n-phantoms", "5", "--out", "{tmp}/t"],
     r"--n-phantoms .*phantom dataset"),
    (["cv", "--model", "unet", "--folds", "a,b", "--out", "{tmp}/c"], r"--folds .*fold numbers"),
    (["cv", "--model", "unet", "--folds", "0,0", "--out", "{tmp}/c"], r"--folds .*twice"),
    (["data", "split", "phantom", "--random", "--threshold", "3", "--out", "{tmp}/s.json"],
     r"--threshold .*--random"),
    (["data", "split", "phantom", "--random", "--no-crop-search", "--out", "{tmp}/s.json"],
     r"--no-crop-search .*--random"),
    (["data", "split", "busbra", "--root", "{tmp}", "--busbra-official", "5", "--k", "3", "--out", "{tmp}/s.json"],
     r"--k .*--busbra-official"),
    (["data", "split", "busbra", "--root", "{tmp}", "--busbra-official", "5", "--random", "--out", "{tmp}/s.json"],
     r"--random .*--busbra-official"),
    (["models", "unet", "--image-size", "128"], r"--image-size .*--flops"),
    (["benchmark", "report", "{tmp}", "--cases", "a,b", "--no-qualitative"], r"--cases .*--no-qualitative"),
    (["benchmark", "run", "--models", "unet", "--dataset", "busi", "--n-phantoms", "4", "--out", "{tmp}/b"],
     r"--n-phantoms .*phantom dataset"),
]


@pytest.mark.parametrize("argv, message", UNHONOURED, ids=[" ".join(a[:2] + a[-2:]) for a, _ in UNHONOURED])
def test_options_a_command_cannot_honour_are_refused(argv, message, tmp_path, capsys):
    import re

    existing = tmp_path / "model.ckpt"
    existing.write_bytes(b"x")
    argv = [a.format(file=existing, tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written before the refusal"
