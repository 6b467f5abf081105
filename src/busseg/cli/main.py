"""Entry point of the ``busseg`` command: discovers sub-command modules in ``busseg.cli``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import busseg
from busseg.console import configure_logging
from busseg.errors import BussegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busseg",
        description="Breast-ultrasound lesion segmentation and classification toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"busseg {busseg.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import busseg.cli as cli_pkg

    for mod in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_") or mod.name == "main":
            continue
        module = importlib.import_module(f"busseg.cli.{mod.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except BussegError as exc:
        print(f"busseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"busseg: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the OS refused: one line naming it, no traceback
        from busseg.fileio import os_error_line

        print(f"busseg: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
