"""End-to-end throughput of ``busseg predict``: decoding, preprocessing, the model, resizing back,
measurements, and writing masks, overlays and rows — on a synthetic folder of PNG scans with a
randomly initialised checkpoint (speed does not depend on the weights' values).

    python benchmarks/predict_throughput.py                        # ResNet-18 U-Net, 256², CPU
    python benchmarks/predict_throughput.py --threads 2 --n 96     # the 2-core target (>= 10 img/s)
    python benchmarks/predict_throughput.py --device cuda --batch-size 32 --backends pytorch

Reports, for each backend — eager PyTorch (``pytorch``), the model exported to ONNX and run by
onnxruntime (``onnx-fp32``), and that ONNX model quantized to INT8 (``onnx-int8``, calibrated on
phantoms, as ``busseg export --quantize int8``) — end-to-end images/s (what `busseg predict`
achieves: decoding, the model, resizing back, measurements and writing every mask, overlay and
row included) and model-only images/s (the forward passes alone, at the same batch size), and
the speed-ups over eager PyTorch. With random weights the INT8 mask agreement is printed but
means nothing for a trained model (speed does not depend on the weights' values). Everything
is measured; nothing is assumed. Timings on a machine shared with other jobs vary: run it on
an idle machine and repeat (--repeats): the median run is reported, every run is kept in the
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def write_scans(folder: Path, n: int, height: int, width: int, seed: int = 0) -> Path:
    """``n`` phantom scans of ``height``x``width`` pixels as 8-bit PNG (a typical B-mode frame
    size; BUSI images are about 500x600)."""
    from busseg.data.phantom import make_phantoms

    folder.mkdir(parents=True, exist_ok=True)
    phantoms = make_phantoms(min(n, 32), image_size=256, seed=seed)
    for i in range(n):
        image = Image.fromarray(phantoms.images[i % len(phantoms.images)]).resize((width, height), Image.BILINEAR)
        image.save(folder / f"scan_{i:04d}.png")
    return folder


def write_random_checkpoint(path: Path, model: str, image_size: int) -> dict:
    """A checkpoint in the engine's format holding a randomly initialised model."""
    from busseg.engine.recipe import apply_overrides, load_recipe
    from busseg.engine.task import build_model_from_recipe
    from busseg.models import model_info

    recipe = apply_overrides(load_recipe(model_info(model).recipe),
                             [f"model={model}", f"image_size={image_size}", "encoder_weights=none"])
    torch.manual_seed(0)
    net = build_model_from_recipe(recipe)
    torch.save({"hyper_parameters": {"recipe": recipe},
                "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return recipe


def model_only_rate(predictor, batch_size: int, n_batches: int, tta: bool) -> float:
    """Images/s of the forward passes alone (the same entry point `predict` uses)."""
    from busseg.inference.export import random_inputs

    predictor = predictor.with_options(tta=tta, batch_size=batch_size)
    x = random_inputs(predictor.recipe, batch_size, seed=1)
    predictor.probabilities(x)
    if predictor.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_batches):
        predictor.probabilities(x)
    if predictor.device.startswith("cuda"):
        torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - start)


def end_to_end_rate(predictor, scans: Path, out: Path, args) -> dict:
    from busseg.inference.predict import predict

    # warm-up on a few images (first-call allocations, kernel selection), then the timed run
    warm = sorted(scans.glob("*.png"))[: args.batch_size]
    predict(predictor, warm, out / "warmup", batch_size=args.batch_size, workers=args.workers, tta=args.tta,
            progress=False)
    rates = []
    for r in range(args.repeats):
        summary = predict(predictor, scans, out / f"run{r}", batch_size=args.batch_size, workers=args.workers,
                          tta=args.tta, progress=False)
        if summary["n_failed"] or summary["n_predicted"] != args.n:
            raise RuntimeError(f"benchmark run did not predict every image: {summary['failures']}")
        rates.append(summary["images_per_s"])
    return {"images_per_s": float(np.median(rates)), "all_runs": rates}


BACKENDS = ("pytorch", "onnx-fp32", "onnx-int8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet_resnet18", help="registered model (default unet_resnet18)")
    p.add_argument("--image-size", type=int, default=256, help="network input size (default 256)")
    p.add_argument("--scan-size", type=int, nargs=2, default=(480, 600), metavar=("H", "W"),
                   help="size of the synthetic scans (default 480 600)")
    p.add_argument("--n", type=int, default=64, help="number of scans (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="decode/write threads (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch and onnxruntime (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per backend (the median is reported)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                   help=f"backends to measure (default: {' '.join(BACKENDS)})")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only (same as --backends pytorch)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = p.parse_args(argv)

    from busseg.inference.export import export_onnx
    from busseg.inference.predictor import load as load_predictor

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="busseg-predict-bench-"))
    scans = write_scans(work / "scans", args.n, *args.scan_size)
    checkpoint = work / "random.ckpt"
    write_random_checkpoint(checkpoint, args.model, args.image_size)

    results: dict = {
        "model": args.model, "image_size": args.image_size, "scan_size": list(args.scan_size), "n_images": args.n,
        "batch_size": args.batch_size, "workers": args.workers, "threads": threads, "device": args.device,
        "tta": args.tta, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    backends = ["pytorch"] if args.no_onnx else args.backends
    n_batches = max(2, args.n // args.batch_size // 2)
    predictor = load_predictor(checkpoint, device=args.device)
    predictors = {"pytorch": predictor} if "pytorch" in backends else {}
    notes = []
    if any(b.startswith("onnx") for b in backends):
        import onnxruntime

        results["onnxruntime"] = onnxruntime.__version__
        export = export_onnx(predictor.models[0], predictor.recipe, work / "model.onnx", exporter=args.exporter)
        notes.append(f"export: {export.exporter}, max |onnxruntime fp32 - PyTorch| "
                     f"{max(export.max_abs_diff.values()):.1e}")
        if "onnx-fp32" in backends:
            predictors["onnx-fp32"] = load_predictor(work / "model.onnx", device=args.device,
                                                     onnx_threads=threads)
        if "onnx-int8" in backends:
            from busseg.inference.export import pytorch_reference
            from busseg.inference.quantize import quantize_onnx

            quantization = quantize_onnx(work / "model.onnx", work / "model.int8.onnx", predictor.recipe,
                                         pytorch_reference(predictor.models[0]), min_dice=0.0)
            results["int8_check"] = quantization.as_dict()
            notes.append(f"int8: mask Dice vs PyTorch {quantization.mean_dice:.4f} mean, {quantization.min_dice:.4f} "
                         "lowest (random weights: not an accuracy figure)")
            predictors["onnx-int8"] = load_predictor(work / "model.int8.onnx", device=args.device,
                                                     onnx_threads=threads)
    for backend in backends:
        results[backend] = {
            "model_only_images_per_s": model_only_rate(predictors[backend], args.batch_size, n_batches, args.tta),
            **end_to_end_rate(predictors[backend], scans, work / f"out_{backend}", args),
        }

    print(f"{args.model} at {args.image_size}x{args.image_size}, {args.n} PNG scans of "
          f"{args.scan_size[0]}x{args.scan_size[1]}, batch {args.batch_size}, {threads} threads, "
          f"{args.workers} I/O workers, {args.device}{', TTA' if args.tta else ''}, "
          f"median of {args.repeats} run(s)")
    print(f"{'backend':<12}{'end-to-end img/s':>18}{'model-only img/s':>18}{'speed-up e2e':>14}")
    for backend in backends:
        r = results[backend]
        speedup = (f"{r['images_per_s'] / results['pytorch']['images_per_s']:.2f}x"
                   if "pytorch" in results and backend != "pytorch" else "")
        print(f"{backend:<12}{r['images_per_s']:>18.2f}{r['model_only_images_per_s']:>18.2f}{speedup:>14}")
    for note in notes:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
