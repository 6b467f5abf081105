"""The main job on built-in data: phantoms → audit → leakage-free split → train → evaluate.

It runs with no external data and no network on two CPU cores in a few minutes, and shows the
whole pipeline a study uses: a group-aware split saved as a file, a narrow U-Net (base width 8) trained with the
engine and selected on a validation subset, per-image metrics on held-out phantoms, and a
non-learned baseline (Otsu threshold + largest dark component) for comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from busseg.engine.recipe import apply_overrides, load_recipe


def otsu_baseline_masks(images: np.ndarray) -> np.ndarray:
    """Non-learned baseline: Gaussian smoothing, Otsu threshold (lesions are hypoechoic, i.e.
    darker), then the largest connected dark component."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    out = np.zeros(images.shape, bool)
    for i, img in enumerate(images):
        smooth = ndimage.gaussian_filter(img.astype(np.float32), 2.0)
        dark = smooth < threshold_otsu(smooth)
        labels, n = ndimage.label(dark)
        if n:
            sizes = ndimage.sum(dark, labels, range(1, n + 1))
            out[i] = labels == (1 + int(np.argmax(sizes)))
    return out


def run_demo(out_dir: str | Path = "busseg_output/demo", *, n_phantoms: int = 100, image_size: int = 96,
             epochs: int = 15, model: str = "unet", progress: bool = True, overwrite: bool = False) -> dict:
    from busseg.data import load_records
    from busseg.data.audit import audit_dataset
    from busseg.data.preprocess import prepare
    from busseg.data.splits import fold_ids, make_split, save_split
    from busseg.engine.rundir import check_same_split
    from busseg.engine.train import train_fold
    from busseg.fileio import prepare_output_dir
    from busseg.metrics.aggregate import summarize_per_image
    from busseg.metrics.segmentation import segmentation_metrics

    started = time.time()
    out_dir = prepare_output_dir(out_dir)
    print(f"[1/5] phantom dataset: {n_phantoms} B-mode-like images with benign/malignant lesions ({image_size}px)")
    records = load_records("phantom", n=n_phantoms, image_size=image_size, seed=0)
    prepared = prepare(records, image_size=image_size, progress=False)
    print("[2/5] audit")
    report = audit_dataset(records)
    print("      " + report.to_text().strip().replace("\n", "\n      ")[:1200])
    print("[3/5] group-aware 5-fold split (duplicate clusters kept in one fold)")
    recipe = apply_overrides(load_recipe(model), [
        f"image_size={image_size}", f"epochs={epochs}", "batch_size=8", "encoder_weights=none",
        "optimizer={name: adam, lr: 0.002}", "scheduler={name: cosine}", "early_stopping=null",
        "augmentation={hflip: 0.5}", "model_options={base_channels: 8}", "validation.fraction=0.15",
    ], "demo")
    split = make_split(records, k=5, seed=0, val_fraction=recipe["validation"]["fraction"], groups=report.group_map())
    split["dataset"] = "phantom"
    if not overwrite:  # a rerun with other settings must not replace the split of the run it keeps
        check_same_split(out_dir / "split.json", split)
    save_split(split, out_dir / "split.json")
    train_ids, val_ids, test_ids = fold_ids(split, 0)
    print(f"      fold 0: {len(train_ids)} train, {len(val_ids)} validation, {len(test_ids)} test -> {out_dir / 'split.json'}")

    print(f"[4/5] training {model} for {epochs} epochs on CPU (selection on the validation subset)")
    run_dir = out_dir / f"{model}_fold0"
    result = train_fold(recipe, run_dir, split=split, fold=0, prepared=prepared, progress=progress,
                        accelerator="cpu", resume=True, overwrite=overwrite)
    seg = result["test"]["segmentation"]

    print("[5/5] non-learned baseline (Otsu threshold, largest dark component) on the same test images")
    test = prepared.subset(test_ids)
    base = otsu_baseline_masks(test.images)
    base_summary = summarize_per_image([segmentation_metrics(p, t.astype(bool)) for p, t in zip(base, test.masks)])

    print()
    print(f"held-out phantoms (n={seg['n']}), per-image mean ± std:")
    print(f"  {model:<22} Dice {seg['dice_mean']:.3f} ± {seg['dice_std']:.3f}   IoU {seg['iou_mean']:.3f}   HD95 {seg['hd95_mean']:.1f}px")
    print(f"  {'Otsu threshold':<22} Dice {base_summary['dice_mean']:.3f} ± {base_summary['dice_std']:.3f}   "
          f"IoU {base_summary['iou_mean']:.3f}   HD95 {base_summary['hd95_mean']:.1f}px")
    print(f"run: {run_dir} (recipe.yaml, split.json, run.json, checkpoints/, test/per_image.csv)")
    print(f"demo finished in {time.time() - started:.0f} s; see the model on a web page: busseg serve")
    return {"model": seg, "threshold_baseline": base_summary, "run_dir": str(run_dir)}
