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
