"""Training throughput and inference latency of every registered model, through the busseg
engine (Lightning) and through a plain PyTorch loop over the same model, objective, optimiser and
batches, so the engine's overhead shows as a ratio (target: within 10 %).

    python benchmarks/train_throughput.py                       # all models, CPU, 256², batch 8
    python benchmarks/train_throughput.py --models unet elad_net --steps 20 --device cuda --amp

Prints one row per model: train img/s (engine), train img/s (plain), engine/plain ratio,
inference ms/img. Figures are measured, nothing is assumed; use --json to save them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from busseg.data.preprocess import PreparedData  # noqa: E402
from busseg.data.records import SampleRecord  # noqa: E402
from busseg.engine.data import InMemoryTensors, make_loader  # noqa: E402
from busseg.engine.recipe import apply_overrides, load_recipe  # noqa: E402
from busseg.engine.task import SegmentationTask  # noqa: E402
from busseg.models import list_models, model_info  # noqa: E402
from busseg.models.complexity import measure_inference_ms  # noqa: E402


def synthetic_prepared(n: int, size: int) -> PreparedData:
    from busseg.data.phantom import make_phantoms

    ph = make_phantoms(n, image_size=size, seed=0)
    ids = [f"p{i:04d}" for i in range(n)]
    records = [SampleRecord(id=i, image_path=None, mask_paths=(), label=lab, source="phantom")
               for i, lab in zip(ids, ph.labels)]
    labels = np.array([0 if lab == "benign" else 1 for lab in ph.labels])
    return PreparedData(ids=ids, images=ph.images, masks=ph.masks, labels=labels,
                        original_sizes=[(size, size)] * n, records=records, image_size=size)


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.sync = warmup, None, None, torch.cuda.is_available()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            if self.sync:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.sync:
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def engine_images_per_s(recipe, tensors, ids, steps, warmup, device, precision) -> float:
    task = SegmentationTask(recipe, encoder_weights="none")
    loader = make_loader(tensors, ids, recipe["batch_size"], shuffle=True, seed=0, drop_last=True)
    timer = _StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                        precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer], use_distributed_sampler=False)
    trainer.fit(task, train_dataloaders=loader)
    return steps * recipe["batch_size"] / (timer.end - timer.start)


def plain_images_per_s(recipe, tensors, ids, steps, warmup, device, amp) -> float:
    task = SegmentationTask(recipe, encoder_weights="none")
    model, objective = task.model.to(device).train(), task.objective.to(device)
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    loader = make_loader(tensors, ids, recipe["batch_size"], shuffle=True, seed=0, drop_last=True)
    step, start = 0, None
    dtype = torch.bfloat16 if amp else torch.float32
    while step < warmup + steps:
        for batch in loader:
            if step == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if task.augmenter.enabled:
                batch["image"], batch["mask"] = task.augmenter(batch["image"], batch["mask"])
            with torch.autocast(device, dtype=dtype, enabled=amp):
                out = model(batch["image"])
                loss, _ = objective(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= warmup + steps:
                break
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * recipe["batch_size"] / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or [m for m in list_models() if not m.startswith("test_")]
    n = args.batch_size * 4
    prepared = synthetic_prepared(n, args.image_size)
    precision = "bf16-mixed" if args.amp else "32-true"
    rows = []
    print(f"device {args.device} ({torch.cuda.get_device_name(0) if args.device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"{args.image_size}², batch {args.batch_size}, {args.steps} timed steps, precision {precision}")
    print(f"{'model':<28} {'engine img/s':>12} {'plain img/s':>12} {'ratio':>6} {'infer ms/img':>13}")
    for name in names:
        recipe = apply_overrides(load_recipe(model_info(name).recipe), [
            f"model={name}", f"image_size={args.image_size}", f"batch_size={args.batch_size}", "encoder_weights=none",
            # no validation runs here, so schedules driven by a validation metric are switched off
            *(["scheduler={name: none}"] if load_recipe(model_info(name).recipe)["scheduler"].get("name") == "plateau" else [])])
        tensors = InMemoryTensors(prepared, recipe["normalization"], recipe["in_channels"])
        try:
            engine = engine_images_per_s(recipe, tensors, prepared.ids, args.steps, args.warmup, args.device, precision)
            plain = plain_images_per_s(recipe, tensors, prepared.ids, args.steps, args.warmup, args.device, args.amp)
            task = SegmentationTask(recipe, encoder_weights="none")
            infer = measure_inference_ms(task.model, image_size=args.image_size, in_channels=recipe["in_channels"],
                                         batch=args.batch_size, device=args.device, amp=args.amp)
        except Exception as exc:  # report and go on with the other models
            print(f"{name:<28} failed: {type(exc).__name__}: {exc}")
            continue
        rows.append({"model": name, "engine_img_s": engine, "plain_img_s": plain, "ratio": engine / plain,
                     "infer_ms_per_img": infer, "device": args.device, "amp": args.amp,
                     "image_size": args.image_size, "batch_size": args.batch_size})
        print(f"{name:<28} {engine:>12.2f} {plain:>12.2f} {engine / plain:>6.2f} {infer:>13.2f}", flush=True)
    if rows:
        print(f"median engine/plain ratio: {np.median([r['ratio'] for r in rows]):.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
