"""Learning check: does a model, trained briefly with its own recipe, predict in eval mode?

A model can run, have its paper's parameter count and lower its training loss, yet predict
nothing once switched to eval mode: element-wise dropout on un-normalised activations, stale
BatchNorm statistics, a head that cannot move the background logit. This check catches those
accidents in seconds: a few dozen optimisation steps on the built-in phantoms with the model's
own recipe (normalisation, input channels, loss, optimiser, learning rate, batch size), then
Dice on held-out phantoms measured twice with the same weights, in **eval mode** (what every
prediction uses) and in **training mode** (dropout active, BatchNorm on batch statistics).

A model passes when its eval-mode Dice is above a floor and not far below its training-mode
Dice. The test suite runs it on every model at a small width
(``tests/test_learning_check.py``); ``benchmarks/learning_check.py`` prints the table for
every registered model at paper width.

When the recipe asks for precise BatchNorm statistics (``precise_bn``, as DC-Net's does), they
are re-estimated over the training phantoms before scoring, exactly as ``train_fold`` does
before every validation: the check scores what a training run would score.

What is deliberately left out of the few steps: augmentation, learning-rate schedules and
pretrained encoder weights (the check always starts from random weights).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from busseg.data.phantom import make_phantoms
from busseg.data.preprocess import normalize
from busseg.engine.batchnorm import recompute_batchnorm_statistics
from busseg.engine.recipe import apply_overrides, load_recipe
from busseg.engine.task import SegmentationTask, per_image_dice_iou
from busseg.errors import ConfigError
from busseg.models import count_parameters, model_info

#: Phantom labels as the engine stores them (0 benign, 1 malignant).
_LABEL_INDEX = {"benign": 0, "malignant": 1}


@dataclass
class LearningCheckResult:
    """Outcome of :func:`learning_check` (Dice values are per-image means on held-out phantoms)."""

    model: str
    model_options: dict
    steps: int
    batch_size: int
    image_size: int
    params: int
    loss_first: float
    loss_last: float
    dice_eval: float
    dice_train_mode: float
    seconds: float
    overrides: list[str] = field(default_factory=list)
    precise_bn: bool = False  # BatchNorm statistics re-estimated before scoring (the recipe's precise_bn)

    @property
    def gap(self) -> float:
        """Training-mode minus eval-mode Dice (positive: eval mode predicts worse)."""
        return self.dice_train_mode - self.dice_eval

    def passed(self, floor: float, max_gap: float) -> bool:
        return self.dice_eval >= floor and self.gap <= max_gap

    def as_dict(self) -> dict:
        return asdict(self) | {"gap": self.gap}


def _phantom_tensors(n: int, image_size: int, seed: int, normalization: str, in_channels: int):
    phantoms = make_phantoms(n, image_size=image_size, seed=seed)
    images = torch.as_tensor(np.asarray(normalize(phantoms.images, normalization), np.float32))
    images = images[:, None].repeat(1, in_channels, 1, 1).contiguous()
    masks = torch.as_tensor(phantoms.masks, dtype=torch.float32)[:, None].contiguous()
    labels = torch.as_tensor([_LABEL_INDEX[label] for label in phantoms.labels], dtype=torch.long)
    return images, masks, labels


def _mean_dice(model: torch.nn.Module, images, masks, batch_size: int) -> float:
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = model(images[start : start + batch_size])
            dice, _ = per_image_dice_iou(out.seg, masks[start : start + batch_size])
            scores.append(dice)
    return float(torch.cat(scores).mean())


def learning_check(
    model: str,
    *,
    model_options: dict | None = None,
    overrides: list[str] | None = None,
    steps: int = 40,
    n_train: int = 48,
    n_test: int = 16,
    image_size: int = 64,
    batch_size: int | None = None,
    seed: int = 0,
    cooldown_steps: int = 10,
    cooldown_factor: float = 0.1,
) -> LearningCheckResult:
    """Train ``model`` for ``steps`` steps on phantoms with its own recipe; score held-out
    phantoms in eval and in training mode.

    Args:
        model: registered model name; its recipe (``model_info(model).recipe``) supplies the
            normalisation, input channels, loss, optimiser and batch size.
        model_options: merged over the recipe's ``model_options`` (e.g. a smaller width).
        overrides: recipe overrides ``key=value`` (as ``busseg train --set``).
        steps: optimisation steps (batches drawn from a seeded permutation of the training
            phantoms, epoch after epoch).
        n_train, n_test: training and held-out phantoms (disjoint: generated together, the
            last ``n_test`` are held out).
        image_size: phantom side (must suit the model's ``size_divisor``).
        batch_size: ``None`` keeps the recipe's.
        seed: phantoms, weights and batch order.
        cooldown_steps, cooldown_factor: the last ``cooldown_steps`` of the ``steps`` run at
            the learning rate times ``cooldown_factor``. A few dozen steps at a constant rate
            end with weights still moving fast, and BatchNorm's running statistics (an
            exponential average over the last ~10 batches) then describe earlier weights; a
            short cool-down, as any schedule ends with, lets them catch up, so that the
            eval/training-mode comparison shows what the model does in eval mode, not how
            recently its weights moved. Dropout drift is not cured by it.
    """
    info = model_info(model)
    if not info.segments:
        raise ConfigError(f"learning check: model {model!r} does not segment")
    if not 0 <= cooldown_steps <= steps:
        raise ConfigError(f"learning check: cooldown_steps must lie in [0, {steps}], got {cooldown_steps}")
    if image_size % info.size_divisor:
        raise ConfigError(
            f"learning check: image_size {image_size} is not a multiple of {model!r}'s "
            f"size divisor {info.size_divisor}"
        )
    recipe = load_recipe(info.recipe)
    recipe = apply_overrides(recipe, [f"model={model}", *(overrides or [])], source="learning check")
    recipe["model_options"] = {**recipe["model_options"], **(model_options or {})}
    batch = int(batch_size or recipe["batch_size"])

    images, masks, labels = _phantom_tensors(
        n_train + n_test, image_size, seed, recipe["normalization"], recipe["in_channels"]
    )
    train_idx = torch.arange(n_train)
    test_images, test_masks = images[n_train:], masks[n_train:]

    torch.manual_seed(seed)
    task = SegmentationTask(recipe, encoder_weights="none")
    net = task.model
    optimizer = task.configure_optimizers()
    if isinstance(optimizer, dict):  # schedules are not part of a few-step check
        optimizer = optimizer["optimizer"]
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses: list[float] = []
    permutation = torch.randperm(n_train, generator=order)
    cursor = 0
    net.train()
    for step in range(steps):
        if step == steps - cooldown_steps:
            for group in optimizer.param_groups:
                group["lr"] *= cooldown_factor
        if cursor + batch > n_train:
            permutation, cursor = torch.randperm(n_train, generator=order), 0
        idx = train_idx[permutation[cursor : cursor + batch]]
        cursor += batch
        sample = {"image": images[idx], "mask": masks[idx], "label": labels[idx]}
        optimizer.zero_grad(set_to_none=True)
        loss, _ = task.objective(net(sample["image"]), sample)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"learning check {model!r}: loss became {loss.item()}")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    if recipe["precise_bn"] is not None:
        batches = [images[train_idx[i : i + batch]] for i in range(0, n_train - batch + 1, batch)]
        recompute_batchnorm_statistics(net, batches, recipe["precise_bn"].get("batches"))
    # Training-mode scores on a copy, so that BatchNorm's running statistics of the checked
    # weights are not touched by the held-out images.
    train_mode_copy = copy.deepcopy(net).train()
    dice_train_mode = _mean_dice(train_mode_copy, test_images, test_masks, batch)
    dice_eval = _mean_dice(net.eval(), test_images, test_masks, batch)
    return LearningCheckResult(
        model=model,
        model_options=dict(recipe["model_options"]),
        steps=steps,
        batch_size=batch,
        image_size=image_size,
        params=count_parameters(net),
        loss_first=float(np.mean(losses[:3])),
        loss_last=float(np.mean(losses[-3:])),
        dice_eval=dice_eval,
        dice_train_mode=dice_train_mode,
        seconds=time.perf_counter() - start,
        overrides=list(overrides or []),
        precise_bn=recipe["precise_bn"] is not None,
    )
