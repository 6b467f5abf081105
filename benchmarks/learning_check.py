"""Learning check for every registered model at paper width: does it predict in eval mode?

    python benchmarks/learning_check.py                          # all models, 40 steps, 64²
    python benchmarks/learning_check.py --models attention_unet_plus unet --steps 120
    python benchmarks/learning_check.py --set attention_unet_plus:dropout_levels=encoder

Each model is trained from random weights with its own recipe (normalisation, input channels,
loss, optimiser, learning rate, batch size; no augmentation, no schedule) for ``--steps``
steps on built-in phantoms, then scored on held-out phantoms with the same weights in eval
mode and in training mode (:func:`busseg.engine.learning_check.learning_check`). A row fails
when eval-mode Dice is below ``--floor`` or more than ``--max-gap`` below training-mode Dice.
The test suite runs the same check on small widths (``tests/test_learning_check.py``); this
script is the paper-width table. Exit status 1 when a model fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from busseg.engine.learning_check import learning_check  # noqa: E402
from busseg.models import list_models, model_info  # noqa: E402


def _model_options(items: list[str]) -> dict[str, dict]:
    """``model:key=value`` strings (values parsed as YAML) → ``{model: {key: value}}``."""
    options: dict[str, dict] = {}
    for item in items:
        model, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq:
            raise SystemExit(f"--set {item!r}: expected MODEL:OPTION=VALUE")
        options.setdefault(model, {})[key] = yaml.safe_load(value)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every segmenting model")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--floor", type=float, default=0.5, help="lowest acceptable eval-mode Dice")
    parser.add_argument("--max-gap", type=float, default=0.15, help="largest train-mode minus eval-mode Dice")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="MODEL:OPTION=VALUE",
                        help="model option, e.g. attention_unet_plus:dropout_levels=encoder (repeatable)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    options = _model_options(args.options)
    models = args.models or [m for m in list_models() if model_info(m).segments]
    print(f"learning check: {args.steps} steps, {args.image_size}² phantoms ({args.n_train} train, "
          f"{args.n_test} held out), seed {args.seed}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    header = (f"{'model':22s} {'params':>8s} {'batch':>5s} {'loss first→last':>16s} "
              f"{'Dice eval':>9s} {'Dice train':>10s} {'gap':>6s} {'BN':>7s} {'s':>6s}  result")
    print(header)
    print("-" * len(header))
    rows, failed = [], []
    for name in models:
        start = time.perf_counter()
        try:
            result = learning_check(name, model_options=options.get(name), steps=args.steps,
                                    n_train=args.n_train, n_test=args.n_test,
                                    image_size=args.image_size, seed=args.seed)
        except Exception as exc:  # one broken model must not hide the others' rows
            print(f"{name:22s} ERROR {type(exc).__name__}: {exc}")
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
            failed.append(name)
            continue
        ok = result.passed(args.floor, args.max_gap)
        if not ok:
            failed.append(name)
        print(f"{name:22s} {result.params / 1e6:7.2f}M {result.batch_size:5d} "
              f"{result.loss_first:7.3f}→{result.loss_last:<7.3f} {result.dice_eval:9.3f} "
              f"{result.dice_train_mode:10.3f} {result.gap:6.3f} {'precise' if result.precise_bn else 'running':>7s} "
              f"{time.perf_counter() - start:6.1f}  "
              f"{'ok' if ok else 'FAIL'}", flush=True)
        rows.append(result.as_dict() | {"passed": ok})
    print(f"\nfloor {args.floor}, max gap {args.max_gap}: "
          + (f"{len(failed)} failed: {', '.join(failed)}" if failed else "all passed"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": vars(args), "rows": rows}, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
