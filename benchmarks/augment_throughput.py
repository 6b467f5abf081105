"""Cost of training-time augmentation per batch: milliseconds per batch of phantom images for
the augmentation of a few recipes, next to one training step of a small U-Net for scale.

    python benchmarks/augment_throughput.py                          # CPU, 1 thread, 96² and 256², batch 8
    python benchmarks/augment_throughput.py --threads 2 --sizes 128 --batch-size 16
    python benchmarks/augment_throughput.py --device cuda --sizes 256 --batch-size 32
    PYTHONPATH=/path/to/older/src python benchmarks/augment_throughput.py   # an older busseg

Configurations: ``acsnet`` (the paper recipe's flips and 10-30 degree rotations), ``quick`` (the
flips, rotation, scaling, brightness and contrast of busseg's former quick protocol) and
``robust`` (the robust preset, :data:`busseg.data.augment.ROBUST_PRESET`; skipped by a busseg
that lacks it). Works with the hand-written augmenter that preceded kornia (called with a
``torch.Generator``) and with the kornia one (called with a seed), so the same command measures
both trees. The median of ``--repeats`` timed batches after ``--warmup`` ones is reported;
the JSON line at the end holds every figure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import torch  # noqa: E402

CONFIGS = {
    "acsnet": {"hflip": 0.5, "vflip": 0.5, "rotate": 0.5, "rotate_deg": [10, 30]},
    "quick": {"hflip": 0.5, "rotate": 0.3, "rotate_deg": [0, 15], "scale": [0.9, 1.1],
              "brightness": 0.1, "contrast": 0.1},
    "robust": {"preset": "robust"},
}


def _batch(n: int, size: int, device: str):
    from busseg.data.phantom import make_phantoms

    data = make_phantoms(n, image_size=size, seed=0)
    image = torch.as_tensor(data.images, dtype=torch.float32)[:, None].div(255).to(device)
    mask = torch.as_tensor(data.masks, dtype=torch.float32)[:, None].to(device)
    return image, mask


def _augmenter(cfg: dict):
    """A callable ``(image, mask, seed)`` for this tree's BatchAugmenter, or None when the tree
    does not know the configuration (an older busseg has no presets)."""
    from busseg.data.augment import BatchAugmenter

    try:
        aug = BatchAugmenter.from_recipe(cfg)
    except TypeError:
        return None
    if "generator" in inspect.signature(BatchAugmenter.__call__).parameters:  # hand-written augmenter
        return lambda image, mask, seed: aug(image, mask, torch.Generator().manual_seed(seed))
    return lambda image, mask, seed: aug(image, mask, seed)


def _time(fn, repeats: int, warmup: int, device: str) -> float:
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(i)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _train_step(size: int, batch: int, device: str):
    from busseg.models import create_model

    model = create_model("unet", in_channels=1, base_channels=16).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    image, mask = _batch(batch, size, device)

    def step(_):
        opt.zero_grad()
        out = model(image)
        logits = out.seg if hasattr(out, "seg") else out
        torch.nn.functional.binary_cross_entropy_with_logits(logits, mask).backward()
        opt.step()

    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 256])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-train-step", action="store_true", help="skip the U-Net training step for scale")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import busseg.data.augment as augment_module

    results = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
               "augment_module": augment_module.__file__, "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "ms_per_batch": {}}
    for size in args.sizes:
        image, mask = _batch(args.batch_size, size, args.device)
        for name in args.configs:
            aug = _augmenter(CONFIGS[name])
            if aug is None:
                print(f"{size:4d}²  {name:8s}  (not known to this busseg)")
                continue
            ms = _time(lambda i: aug(image, mask, 1000 + i), args.repeats, args.warmup, args.device)
            results["ms_per_batch"][f"{name}@{size}"] = ms
            print(f"{size:4d}²  {name:8s}  {ms:8.1f} ms per batch of {args.batch_size}")
        if not args.no_train_step:
            ms = _time(_train_step(size, args.batch_size, args.device), max(3, args.repeats // 4), 1, args.device)
            results["ms_per_batch"][f"unet16_train_step@{size}"] = ms
            print(f"{size:4d}²  {'U-Net (base width 16) training step':s}  {ms:8.1f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
