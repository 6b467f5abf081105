"""``busseg predict``: masks, measurements and overlays for a folder of the user's own scans."""

from __future__ import annotations

import argparse

EPILOG = """\
outputs (in --out), named by each image's path relative to the folder or list it was found
through, suffix included (scans/sub/a.jpg given as scans -> masks/sub/a.jpg.png):
  masks/<id>.png        predicted mask at the image's original size (0/255)
  overlays/<id>.png     the mask over the image
  predictions.csv/json  one row per image: lesion found, area (px, mm² with a spacing), bounding box,
                        maximum diameter, orientation (wider-than-tall / taller-than-wide),
                        circularity, peak probability, class probabilities of multi-task models
  failures.csv          files that could not be read, and why (they are skipped)
  summary.json          counts, timing and settings

Run the same command again after an interruption: finished images are skipped (an image
replaced under the same name, or a model file retrained in place, is predicted again).
Exit status: 0 when every file was predicted, 1 when some files were skipped (the others are
written), 2 on an error that stopped the run.

examples:
  busseg predict --model runs/cv_unet scans/ --out predictions/          # ensemble of the fold models
  busseg predict --model runs/cv_unet --fold 0 --tta scan.dcm --out p/   # one fold model, flip TTA
  busseg predict --onnx model.onnx scans/ --out p/ --pixel-spacing 0.1 0.1
  busseg predict --onnx model.int8.onnx scans/ --out p/       # INT8 file of `busseg export --quantize int8`
"""


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict lesion masks and measurements for your own images",
        description="Segment (and classify, for multi-task models) every image of a file, a folder\n"
                    "(searched recursively) or a list file (one path per line): PNG, JPEG, BMP, TIFF and\n"
                    "DICOM (pixel spacing read from the file). Preprocessing is the model's training\n"
                    "recipe; a cv run's fold models are ensembled (mean of probabilities).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders or list files (.txt/.lst/.list)")
    p.add_argument("--out", required=True, help="output folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", dest="models", action="append", metavar="PATH",
                     help="checkpoint, train run or cv folder (repeat to ensemble several)")
    src.add_argument("--onnx", dest="onnx_models", action="append", metavar="PATH",
                     help="ONNX file or folder of ONNX files written by `busseg export` (run by onnxruntime)")
    p.add_argument("--fold", type=int, default=None,
                   help="with a cv folder given by --model: use only this fold's model (with --onnx, pass that "
                        "fold's file)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean of the identity, horizontal and vertical flips")
    p.add_argument("--postprocess", default=None, metavar="SPEC",
                   help="'paper' (documented preset), 'recipe' (the model recipe's setting) or JSON, e.g. "
                        "'{\"keep_largest\": 1, \"fill_holes\": true}'; sizes in network pixels unless "
                        "reference_size is given (default: threshold 0.5 only)")
    p.add_argument("--pixel-spacing", type=float, nargs=2, default=None, metavar=("ROW_MM", "COL_MM"),
                   help="mm per pixel for images that do not record it (DICOM files keep their own)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding and writing images (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-overlays", action="store_true", help="do not write overlay images")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write the probability map (x255) of every image")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute images already predicted in --out (also allows other settings there)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def parse_postprocess(text: str | None):
    if text in (None, "", "recipe", "paper"):
        return text or None
    from busseg.cli.evaluate import parse_postprocess as parse_json

    return parse_json(text)


def run(args) -> int:
    from busseg.errors import ConfigError
    from busseg.fileio import prepare_output_dir
    from busseg.inference.predict import predict
    from busseg.inference.predictor import load

    onnx = bool(args.onnx_models)
    if onnx and args.fold is not None:
        raise ConfigError("--fold picks one model of a cv folder given with --model; with --onnx pass that "
                          "fold's file (fold_<k>.onnx) instead")
    postprocess = parse_postprocess(args.postprocess)
    prepare_output_dir(args.out)
    predictor = load(args.onnx_models if onnx else args.models, fold=args.fold, device=args.device, tta=args.tta,
                     postprocess=postprocess, batch_size=args.batch_size)
    if onnx and predictor.backend != "onnx":
        raise ConfigError(f"--onnx: {', '.join(args.onnx_models)} holds PyTorch checkpoints, not ONNX files "
                          "(use --model)")
    summary = predict(predictor, args.inputs, args.out,
                      pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else None,
                      batch_size=args.batch_size, workers=args.workers,
                      overlays=not args.no_overlays, save_probabilities=args.save_probabilities,
                      overwrite=args.overwrite, progress=not args.no_progress)
    speed = f" ({summary['images_per_s']:.1f} images/s)" if summary["images_per_s"] else ""
    print(f"{summary['model']}: {summary['n_predicted']} images predicted{speed}, "
          f"{summary['n_already_done']} already done, {summary['n_failed']} skipped; results in {args.out}")
    if summary["n_with_lesion"] is not None:
        print(f"  lesion found in {summary['n_with_lesion']} of {summary['n_predicted'] + summary['n_already_done']} images")
    for failure in summary["failures"]:
        print(f"  skipped {failure['file']}: {failure['problem']}")
    return 1 if summary["n_failed"] else 0
