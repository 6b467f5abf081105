"""``busseg evaluate``: score a checkpoint, a fold run or all fold models of a cv run."""

from __future__ import annotations

import json

from busseg.cli._common import add_dataset_options, data_options


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate trained model(s) on a dataset (also cross-dataset)",
                       description="Evaluate a checkpoint, a `train` run or the fold models of a `cv` run. "
                                   "On the training dataset each fold model is scored on its own test "
                                   "fold; on another dataset every fold model is scored on every image "
                                   "(cross-dataset), mean ± std across fold models. Images are scored in "
                                   "their own geometry (probabilities resized back before thresholding) "
                                   "unless --geometry network. Writes per_image.csv and summary.json with a "
                                   "benign/malignant breakdown; both record the geometry used.")
    p.add_argument("run", help="checkpoint file, train run directory or cv directory")
    add_dataset_options(p)
    p.add_argument("--subset", default="auto", choices=("auto", "test", "all"),
                   help="test: each fold's test images; all: every image (default: auto)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    p.add_argument("--ensemble", action="store_true",
                   help="also score the mean of the fold models (cross-dataset only: on the training data "
                        "it would be leaky and is refused)")
    p.add_argument("--geometry", default="original", choices=("original", "network"),
                   help="original (default): score each image at its own size, probabilities resized back "
                        "before thresholding, distances in its pixels (mm with a spacing); network: at the "
                        "network's input size, the papers' protocol")
    p.add_argument("--postprocess", default=None,
                   help="post-processing as JSON (e.g. '{\"keep_largest\": 1, \"fill_holes\": true}') "
                        "or 'paper' for the documented preset; scores are reported with and without it")
    p.add_argument("--figures", type=int, default=0, metavar="N",
                   help="save N case figures per model (best to worst Dice): original, ground truth, "
                        "predicted, post-processed and attention overlay")
    p.add_argument("--corruptions", nargs="?", const="all", default=None, metavar="NAMES",
                   help="also run the robustness benchmark into OUT/corruptions: every test image under "
                        "scanner-like corruptions (gain, tgc, speckle, blur, contrast, gamma, zoom, jpeg, "
                        "annotations; comma-separated subset, default all) at five severities, scored in the "
                        "image's own geometry")
    p.add_argument("--severities", default="1,2,3,4,5", help="corruption severities (default 1,2,3,4,5)")
    p.add_argument("--corruption-seed", type=int, default=0, help="seed of the corruptions' random choices")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def parse_postprocess(text):
    if not text:
        return None
    if text == "paper":
        from busseg.postprocess import PostprocessConfig

        return PostprocessConfig.PAPER_DEFAULT.to_dict()
    from busseg.errors import ConfigError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--postprocess: not valid JSON ({exc})") from exc


def run(args) -> int:
    from busseg.cli.cv import format_cv
    from busseg.engine.evaluate import evaluate_run

    options = data_options(args)
    postprocess = parse_postprocess(args.postprocess)
    corruptions = _corruption_settings(args)  # checked before the evaluation, which may take a while
    result = evaluate_run(args.run, args.out, dataset=args.dataset, root=args.root, data_options=options,
                          subset=args.subset, tta=args.tta, postprocess=postprocess,
                          ensemble=args.ensemble, device=args.device, include_normal=args.include_normal,
                          figures=args.figures, geometry=args.geometry)
    if "segmentation" in result:
        scored = ("each fold model on its own test fold" if result["subset"] == "test"
                  else f"every image of {result['dataset']} scored by each model")
        print(format_cv({**result, "folds": list(range(result["n_models"])),
                         "aggregation": f"{scored}, mean ± std across models, {result['geometry']} geometry"
                                        f"{', flip TTA' if result['tta'] else ''}"}))
    if "ensemble" in result and "segmentation" in result["ensemble"]:
        e = result["ensemble"]["segmentation"]
        print(f"  ensemble of {result['n_models']} models (one score, ± is the std over images): "
              f"Dice {100 * e['dice_mean']:.2f} ± {100 * e['dice_std']:.2f}, "
              f"IoU {100 * e['iou_mean']:.2f} ± {100 * e['iou_std']:.2f}")
    if corruptions is not None:
        run_corruptions(args, *corruptions, postprocess)
    print(f"results in {args.out}")
    return 0


def _corruption_settings(args) -> tuple[list[str], list[int]] | None:
    """``(corruptions, severities)`` of ``--corruptions``/``--severities``, checked; ``None``
    without ``--corruptions``."""
    if args.corruptions is None:
        return None
    from busseg.data.corruptions import check_corruptions, parse_corruptions
    from busseg.errors import ConfigError

    try:
        severities = [int(s) for s in args.severities.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--severities: expected comma-separated integers 1-5, got {args.severities!r}") from None
    return check_corruptions(parse_corruptions(args.corruptions), severities)


def run_corruptions(args, corruptions: list[str], severities: list[int], postprocess) -> None:
    """The robustness benchmark into ``OUT/corruptions``, with evaluate's TTA and post-processing
    (its clean rows are the masks the evaluation above scored, in the original geometry)."""
    from pathlib import Path

    from busseg.engine.robustness import evaluate_corruptions, format_robustness

    if args.geometry != "original":
        print("note: the robustness benchmark scores in the images' original geometry (corruptions such as zoom "
              "change the image itself), whatever --geometry says")
    summary = evaluate_corruptions(args.run, Path(args.out) / "corruptions", dataset=args.dataset, root=args.root,
                                   data_options=data_options(args), subset=args.subset,
                                   corruptions=corruptions, severities=severities, seed=args.corruption_seed,
                                   device=args.device, include_normal=args.include_normal, tta=args.tta,
                                   postprocess=postprocess)
    print(format_robustness(summary))
