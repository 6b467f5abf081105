"""``busseg export``: ONNX export of a trained (or any registered) model, checked against PyTorch."""

from __future__ import annotations

import argparse

EPILOG = """\
The exported graph takes normalised images [B, C, S, S] (dynamic batch B; S and C from the recipe)
and returns seg_logits [B,1,S,S] and, for multi-task models, cls_logits [B,2] (apply a sigmoid /
softmax). The recipe is stored in the file's metadata, so `busseg predict --onnx FILE` preprocesses
as training did. The file is written only if onnxruntime agrees with PyTorch on random images.

examples:
  busseg export runs/unet_fold0 --out unet.onnx
  busseg export runs/cv_unet --out onnx/            # fold_<k>.onnx for every fold model
  busseg export unet_resnet18 --out r18.onnx        # untrained architecture (export check only)
  busseg export runs/unet_fold0 --out unet.onnx --quantize int8 --calibration scans/
                                                    # also unet.int8.onnx, calibrated on your scans

INT8 (--quantize int8): static onnxruntime quantization (QDQ; uint8 activations, int8 per-channel
weights) calibrated on --calibration images, then checked on phantom images by the agreement of its
masks with PyTorch's (mean Dice >= --min-dice, else it is not written). Run it with
`busseg predict --onnx unet.int8.onnx`; a folder export puts the INT8 files in <out>/int8/.
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch), checked against PyTorch",
                       description="Export a checkpoint, a train run, every fold model of a cv run, or a\n"
                                   "registered model (untrained) to ONNX with a dynamic batch axis; onnxruntime\n"
                                   "is compared with PyTorch on random inputs and the largest absolute\n"
                                   "difference is reported.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint, train run folder, cv folder or registered model name")
    p.add_argument("--out", required=True,
                   help="output .onnx file (one model) or folder (several fold models: fold_<k>.onnx)")
    p.add_argument("--fold", type=int, default=None, help="with a cv folder: export only this fold's model")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                   help="auto: torch.export (dynamo), falling back to the TorchScript tracer (default)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the check (default 1e-3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="registered model only: recipe override, e.g. --set image_size=128")
    p.add_argument("--encoder-weights", default=None,
                   help="registered model only: imagenet | none | FILE (default none)")
    p.add_argument("--quantize", default=None, choices=("int8",),
                   help="also write an INT8 model (static post-training quantization, onnxruntime)")
    p.add_argument("--calibration", default=None, metavar="FOLDER|phantoms",
                   help="images the INT8 activation ranges are calibrated on: a file, folder or list file of "
                        "scans (best: your own), or 'phantoms' (synthetic; default)")
    p.add_argument("--calibration-count", type=int, default=None,
                   help="calibration images used (default 16, evenly spaced through the folder)")
    p.add_argument("--min-dice", type=float, default=None,
                   help="INT8 is refused unless its masks agree with PyTorch's with at least this mean Dice "
                        "(default 0.98; 0 only reports)")
    p.set_defaults(func=run)


def registered_model(name: str, overrides=(), encoder_weights: str = "none") -> list[tuple]:
    """``[(None, model, recipe)]`` for a registered model built from its paper recipe with
    ``overrides``: untrained unless ``encoder_weights`` is a file (checks that it exports)."""
    import logging

    from busseg.engine.recipe import apply_overrides, load_recipe
    from busseg.errors import ConfigError
    from busseg.models import list_models, model_info
    from busseg.models.checkpoint import build_model_from_recipe

    if name not in list_models():
        raise ConfigError(f"{name}: neither a checkpoint / run directory nor a registered model "
                          f"(registered: {', '.join(list_models())})")
    recipe = apply_overrides(load_recipe(model_info(name).recipe), [*overrides, f"model={name}"])
    recipe["encoder_weights"] = encoder_weights
    logging.getLogger("busseg").warning(
        "exporting %s with %s encoder weights and an untrained decoder (no checkpoint given)", name, encoder_weights)
    return [(None, build_model_from_recipe(recipe).eval(), recipe)]


def refuse_unused_options(args) -> None:
    """Options that only apply to some sources (or to --quantize) are refused elsewhere."""
    from pathlib import Path

    from busseg.errors import ConfigError

    if Path(args.source).exists():
        for option, given in (("--set", args.overrides), ("--encoder-weights", args.encoder_weights)):
            if given:
                raise ConfigError(f"{option} applies to a registered model name only; {args.source} is a trained "
                                  "model whose recipe and weights are exported as they are")
    elif args.fold is not None:
        raise ConfigError(f"--fold picks one model of a cv folder; {args.source} is a registered model name")
    if args.quantize is None:
        for option, given in (("--calibration", args.calibration), ("--calibration-count", args.calibration_count),
                              ("--min-dice", args.min_dice)):
            if given is not None:
                raise ConfigError(f"{option} applies to INT8 quantization only: add --quantize int8")


def run(args) -> int:
    from pathlib import Path

    from busseg.fileio import prepare_output_dir, prepare_output_file
    from busseg.inference.export import export

    refuse_unused_options(args)
    if args.out.endswith(".onnx"):
        prepare_output_file(args.out)
    else:
        prepare_output_dir(args.out)
    if Path(args.source).exists():
        source = args.source
    else:
        source = registered_model(args.source, args.overrides, args.encoder_weights or "none")
    quantization = {key: value for key, value in (("calibration", args.calibration),
                                                  ("calibration_count", args.calibration_count),
                                                  ("min_dice", args.min_dice)) if value is not None}
    results = export(source, args.out, fold=args.fold, exporter=args.exporter, opset=args.opset,
                     atol=args.atol, rtol=args.rtol, quantize=args.quantize, **quantization)
    for result in results:
        print(result.describe())
        for note in result.notes:
            print(f"  note: {note}")
    return 0
