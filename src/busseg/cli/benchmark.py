"""``busseg benchmark``: compare models under one protocol (run), write the report (report),
and measure what random splits do to results (leakage)."""

from __future__ import annotations

import argparse
import sys

from busseg.cli._common import add_trainer_options, data_options, parse_folds

_EPILOG_RUN = """examples:
  # every model with a recipe, fixed CPU budget, on BUSI (smoke comparison, not paper numbers)
  busseg benchmark run --dataset busi --root DATA/Dataset_BUSI_with_GT --quick --models all --out results/quick
  # three models with their paper recipes, also tested on BUS-BRA
  busseg benchmark run --dataset busi --models elad_net acsnet unet --protocol paper \\
      --cross busbra=DATA/BUS-BRA --out results/paper
Re-running the same command skips finished folds and resumes interrupted ones."""


def _add_data(p: argparse.ArgumentParser) -> None:
    from busseg.data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="busi", choices=DATASETS, help="dataset to cross-validate on (default: busi)")
    g.add_argument("--root", default=None, help="dataset folder (default: $BUSSEG_DATA_DIR/<dataset>)")
    g.add_argument("--n-phantoms", type=int, default=None, help="number of phantom images (dataset phantom)")


def _add_protocol(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("protocol")
    g.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="registered model names, or 'all' (every segmenting model whose recipe file exists)")
    g.add_argument("--protocol", default="paper",
                   help="paper (each model's own recipe; default), quick, or a YAML file of recipe fields "
                        "applied to every model")
    g.add_argument("--quick", action="store_true",
                   help="the fixed-budget quick protocol: 128x128, 3 epochs, batch 8, the robust augmentation "
                        "preset for every model, no pretrained weights, 3 folds, precise BatchNorm statistics (same as --protocol quick)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                   help="recipe override applied after the protocol, to every model (--set epochs=5) or to one "
                        "model (--set unet:model_options.base_channels=8) (repeatable)")
    g.add_argument("--recipe", dest="recipes", action="append", default=[], metavar="MODEL=FILE",
                   help="start MODEL from this recipe file instead of its paper recipe; a file without a 'model' "
                        "field is partial and is merged onto MODEL's paper recipe (repeatable)")
    g.add_argument("--k", type=int, default=None,
                   help="folds of the shared split (default: the protocol's cv_folds; 5 under 'paper')")


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="compare models under one protocol; report; leakage study",
                       description="Benchmark several models on one shared split and write a report "
                                   "(Markdown + self-contained HTML) with tables, statistics and figures.")
    bsub = p.add_subparsers(dest="benchmark_command", metavar="ACTION")
    bsub.required = True

    run = bsub.add_parser("run", help="train and test models × folds of one shared split, then write the report",
                          description="Cross-validate every model on one shared (duplicate-aware) split of a "
                                      "dataset into one results folder, optionally evaluate each fold model on "
                                      "other datasets, measure complexity, and write the report.",
                          epilog=_EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--out", required=True, help="results folder (one folder = one protocol)")
    _add_data(run)
    _add_protocol(run)
    run.add_argument("--split", default=None, help="split JSON file to share (default: a new group-aware split)")
    run.add_argument("--folds", default=None, help="comma-separated subset of folds to run, e.g. 0,1")
    run.add_argument("--cross", action="append", default=[], metavar="DATASET[=ROOT]",
                     help="also evaluate every fold model on all images of this dataset (repeatable)")
    run.add_argument("--corruptions", nargs="?", const="all", default=None, metavar="NAMES",
                     help="also run the robustness benchmark: every fold model on its test images under "
                          "scanner-like corruptions at five severities (comma-separated subset, default all); "
                          "the report gains a robustness table, Dice-vs-severity plot and an example grid")
    run.add_argument("--no-complexity", action="store_true", help="skip parameters/FLOPs/timing")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--dry-run", action="store_true",
                     help="check every recipe under the protocol and print the plan; train nothing, write nothing")
    add_trainer_options(run)
    run.set_defaults(func=_run)

    rep = bsub.add_parser("report", help="(re)write report.md / report.html from a results folder",
                          description="Recompute every table from the per-image CSVs of a results folder and write "
                                      "report.md, report.html (figures embedded), report_numbers.json and figures/.")
    rep.add_argument("results", help="results folder written by `busseg benchmark run`")
    rep.add_argument("--cases", default=None,
                     help="comma-separated image ids for the qualitative grid (default: best/median/worst by mean Dice)")
    rep.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    rep.add_argument("--no-qualitative", action="store_true", help="skip the qualitative grid (needs the data)")
    rep.set_defaults(func=_report)

    leak = bsub.add_parser("leakage", help="random image-level split vs duplicate-aware split, same model",
                           description="Cross-validate a model twice on the same images: with a random image-level "
                                       "split and with busseg's duplicate-aware split, and report how many test "
                                       "images leak and how much the random split inflates the metrics.")
    leak.add_argument("--out", required=True, help="results folder of the study")
    _add_data(leak)
    _add_protocol(leak)
    add_trainer_options(leak)
    leak.set_defaults(func=_leakage)


def _resolve_models(names: list[str]) -> list[str]:
    from busseg.engine.recipe import list_recipes
    from busseg.models import list_models, model_info

    if names != ["all"]:
        for name in names:
            model_info(name)
        return names
    shipped = set(list_recipes())
    chosen = [m for m in list_models() if model_info(m).segments and model_info(m).recipe in shipped]
    skipped = [m for m in list_models() if m not in chosen]
    if skipped:
        print(f"busseg benchmark: 'all' leaves out {', '.join(skipped)} (no recipe file, or not segmenting)",
              file=sys.stderr)
    return chosen


def _common(args, models: list[str]) -> dict:
    from busseg.errors import ConfigError
    from busseg.report.benchmark import split_overrides

    protocol = "quick" if args.quick else args.protocol
    if args.quick and args.protocol not in ("paper", "quick"):
        raise ConfigError("give either --quick or --protocol FILE, not both")
    recipes = {}
    for item in args.recipes:
        model, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--recipe {item!r}: expected MODEL=FILE")
        recipes[model] = path
    devices = args.devices if args.devices == "auto" else int(args.devices)
    overrides, model_overrides = split_overrides(args.overrides, models)
    return dict(dataset=args.dataset, root=args.root, protocol=protocol, overrides=overrides, k=args.k,
                recipes=recipes or None, model_overrides=model_overrides or None,
                data_options=data_options(args) or None,
                accelerator=args.accelerator, devices=devices, strategy=args.strategy, precision=args.precision,
                progress=not args.no_progress)


def _print_plan(models: list[str], options: dict, out: str) -> None:
    """The dry run: every recipe resolved and checked as the run checks it, nothing written."""
    from busseg.data.augment import describe_augmentation
    from busseg.report.benchmark import check_results_folder, plan_benchmark, resolve_protocol

    protocol = resolve_protocol(options["protocol"], options["overrides"])
    planned = plan_benchmark(models, protocol, k=options["k"], recipes=options["recipes"],
                             model_overrides=options["model_overrides"])
    state = check_results_folder(out, options["dataset"], planned)
    k = next(iter(planned.values()))["cv_folds"]
    print(f"protocol {protocol.name!r}, {k} folds of one shared split of {options['dataset']}, {len(planned)} model(s) "
          "(every model, objective and optimiser built and checked):")
    print(f"  {'model':<24} {'size':>5} {'epochs':>6} {'batch':>5} {'channels':>8}  {'weights':<8} "
          "optimizer / loss / augmentation / in the results folder")
    for name, r in planned.items():
        own = (options["model_overrides"] or {}).get(name)
        print(f"  {name:<24} {r['image_size']:>5} {r['epochs']:>6} {r['batch_size']:>5} {r['in_channels']:>8}  "
              f"{r['encoder_weights']:<8} {r['optimizer']['name']} lr={r['optimizer']['lr']} / {r['loss']['name']} / "
              f"{describe_augmentation(r['augmentation'])} / {state[name]}"
              + (f"; own overrides {' '.join(own)}" if own else ""))


def _corruptions(args) -> list[str] | None:
    """The corruption names of ``--corruptions`` (all when given without names), or ``None``."""
    if args.corruptions is None:
        return None
    from busseg.data.corruptions import parse_corruptions

    return parse_corruptions(args.corruptions)


def _run(args) -> int:
    from busseg.report.benchmark import parse_cross, run_benchmark

    models = _resolve_models(args.models)
    options = _common(args, models)
    if args.dry_run:
        parse_folds(args.folds)
        parse_cross(args.cross)
        _corruptions(args)
        _print_plan(models, options, args.out)
        return 0
    folds = parse_folds(args.folds)
    record = run_benchmark(args.out, models, folds=folds, split=args.split,
                           cross=parse_cross(args.cross), corruptions=_corruptions(args),
                           complexity=not args.no_complexity,
                           report=not args.no_report, **options)
    for model, status in record["status"].items():
        print(f"{model}: " + ("FAILED " + status["error"] if "error" in status else
                              ", ".join(f"{k} {v}" for k, v in status.items())))
    print(f"results in {args.out} ({record['seconds']} s)" + ("" if args.no_report else f"; report {args.out}/report.html"))
    return 1 if record["failed"] else 0


def _report(args) -> int:
    from busseg.report.compose import build_report

    if args.cases and args.no_qualitative:
        from busseg.errors import ConfigError

        raise ConfigError("--cases chooses the images of the qualitative grid, which --no-qualitative leaves out")
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else None
    paths = build_report(args.results, cases=cases, alpha=args.alpha, qualitative=not args.no_qualitative)
    print(f"wrote {paths['markdown']}, {paths['html']}")
    return 0


def _leakage(args) -> int:
    from busseg.report.leakage import leakage_study

    models = _resolve_models(args.models)
    meta = leakage_study(args.out, models, **_common(args, models))
    for model, result in meta["models"].items():
        d = result["difference"]
        gaps = ", ".join(f"{label} {result[key]['gap'] * 100:+.1f} (n={result[key]['n']})"
                         for key, label in (("leaking_images", "with a duplicate in training"),
                                            ("non_leaking_images", "without")) if "gap" in result[key])
        print(f"{model}: random − grouped Dice {d['dice'] * 100:+.2f} points, IoU {d['iou'] * 100:+.2f} points "
              f"({meta['splits']['random']['leaked_test_images']} leaking test images under the random split, "
              f"{meta['splits']['grouped']['leaked_test_images']} under the grouped one); per-image Dice gap: {gaps}")
    print(f"report: {args.out}/leakage.md")
    return 0
