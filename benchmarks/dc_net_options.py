"""DC-Net's numerics options measured on phantoms: does the model learn, and does eval mode
stay close to training mode?

For each option set and seed: build ``dc_net`` with those options, train it with the recipe's
objective and optimiser (Adam 3e-4, batch 4, min-max inputs) on 80 phantoms for ``--steps``
steps, then score 40 new phantoms three ways: in training mode (batch statistics), in eval mode
with the stored running statistics, and in eval mode after re-estimating the BatchNorm
statistics over the training images (precise BN, ``busseg.engine.batchnorm``). Also printed:
the starting logit (mean over a training batch, training mode), the first step's harmonic term
and the largest |logit| in eval mode (a blow-up shows there first).

    python benchmarks/dc_net_options.py                                  # stabiliser grid
    python benchmarks/dc_net_options.py --grid head --seeds 0 1 2        # head start grid
    python benchmarks/dc_net_options.py --grid none --set dcp_kernel=softmax --widths paper

Nothing is assumed; every figure is measured on this machine. One CPU thread by default.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("BUSSEG_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from busseg.data.phantom import make_phantoms  # noqa: E402
from busseg.data.preprocess import normalize  # noqa: E402
from busseg.engine.batchnorm import recompute_batchnorm_statistics  # noqa: E402
from busseg.engine.recipe import load_recipe  # noqa: E402
from busseg.engine.task import per_image_dice_iou  # noqa: E402
from busseg.losses import create_objective  # noqa: E402
from busseg.models import create_model  # noqa: E402

WIDTHS = {
    "paper": {},
    "half": {"widths": [16, 32, 64, 128, 256],
             "decomposition_widths": [[16, 32], [32, 64], [64, 128], [128, 32], [32, 16]]},
    "small": {"widths": [8, 16, 32, 64, 128],
              "decomposition_widths": [[8, 16], [16, 32], [32, 64], [64, 16], [16, 8]]},
}
GRIDS = {
    "stabilisers": [
        {"dcp_kernel": "none", "ccf_weights": "none"},
        {"dcp_kernel": "softmax", "ccf_weights": "none"},
        {"dcp_kernel": "none", "ccf_weights": "sigmoid"},
        {"dcp_kernel": "softmax", "ccf_weights": "sigmoid"},
    ],
    "head": [
        {"head_norm": False},
        {"head_norm": True, "head_prior": 0.5},
        {"head_norm": True, "head_prior": 0.1},
        {"head_norm": True, "head_prior": 0.01},
    ],
    "none": [{}],
}
N_TRAIN, N_TEST = 80, 40


def run_one(options: dict, seed: int, steps: int, size: int, batch_size: int) -> dict:
    recipe = load_recipe("dc_net")
    phantoms = make_phantoms(N_TRAIN + N_TEST, size, seed=0)
    images = torch.as_tensor(np.asarray(normalize(phantoms.images, recipe["normalization"]), np.float32))[:, None]
    masks = torch.as_tensor(phantoms.masks, dtype=torch.float32)[:, None]
    train_x, train_y, test_x, test_y = images[:N_TRAIN], masks[:N_TRAIN], images[N_TRAIN:], masks[N_TRAIN:]

    torch.manual_seed(seed)
    model = create_model("dc_net", **options)
    objective = create_objective(**recipe["loss"])
    opt_cfg = {k: v for k, v in recipe["optimizer"].items() if k != "name"}
    optimizer = torch.optim.Adam(model.parameters(), **{**opt_cfg, "betas": tuple(opt_cfg["betas"])})
    model.train()
    with torch.no_grad():
        start_logit = model(train_x[:batch_size]).seg.mean().item()
    g = torch.Generator().manual_seed(seed)
    order, pos, first = torch.randperm(N_TRAIN, generator=g), 0, None
    started = time.time()
    for _ in range(steps):
        if pos + batch_size > N_TRAIN:
            order, pos = torch.randperm(N_TRAIN, generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        optimizer.zero_grad()
        loss, parts = objective(model(train_x[idx]), {"mask": train_y[idx], "label": torch.zeros(len(idx))})
        loss.backward()
        optimizer.step()
        if first is None:
            first = {k: float(v) for k, v in parts.items()}
    seconds = time.time() - started

    @torch.no_grad()
    def score(training: bool) -> tuple[float, float]:
        model.train(training)
        dice, largest = [], 0.0
        for i in range(0, N_TEST, batch_size):
            logits = model(test_x[i:i + batch_size]).seg
            dice.append(per_image_dice_iou(logits, test_y[i:i + batch_size])[0])
            largest = max(largest, logits.abs().max().item())
        return torch.cat(dice).mean().item(), largest

    train_dice, _ = score(True)
    eval_dice, eval_max = score(False)
    recompute_batchnorm_statistics(model, (train_x[i:i + batch_size] for i in range(0, N_TRAIN, batch_size)))
    precise_dice, precise_max = score(False)
    return {"options": options, "seed": seed, "start_logit": start_logit,
            "first_harmonic_x_lambda": first["seg_harmonic"] * recipe["loss"]["lambda_harmonic"],
            "train_mode_dice": train_dice, "eval_dice": eval_dice, "eval_max_abs_logit": eval_max,
            "precise_bn_eval_dice": precise_dice, "precise_bn_max_abs_logit": precise_max,
            "train_seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="stabilisers")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="OPTION=VALUE",
                   help="model option applied to every run (value parsed as YAML), e.g. head_norm=false")
    p.add_argument("--widths", choices=sorted(WIDTHS), default="half")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fixed = dict(WIDTHS[args.widths])
    for item in args.overrides:
        key, _, value = item.partition("=")
        fixed[key] = yaml.safe_load(value)
    rows = []
    print(f"dc_net, widths {args.widths}, {args.size}² phantoms, {args.steps} steps, batch {args.batch_size}")
    print(f"{'options':<48} {'seed':>4} {'start':>7} {'harm1':>6} {'train':>6} {'eval':>6} "
          f"{'max|z|':>9} {'precise':>7} {'max|z|':>9} {'s':>6}")
    for options in GRIDS[args.grid]:
        for seed in args.seeds:
            row = run_one({**fixed, **options}, seed, args.steps, args.size, args.batch_size)
            rows.append(row)
            print(f"{json.dumps(options):<48} {seed:>4} {row['start_logit']:>7.2f} "
                  f"{row['first_harmonic_x_lambda']:>6.2f} {row['train_mode_dice']:>6.3f} "
                  f"{row['eval_dice']:>6.3f} {row['eval_max_abs_logit']:>9.3g} "
                  f"{row['precise_bn_eval_dice']:>7.3f} {row['precise_bn_max_abs_logit']:>9.3g} "
                  f"{row['train_seconds']:>6.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
