"""The Lightning module every model trains with: model + objective + optimiser + schedule.

Segmentation-only and multi-task models share it: the objective decides what it uses of the
model's :class:`~busseg.models.output.ModelOutput`, validation reports Dice when the model
segments and accuracy when it classifies.
"""

from __future__ import annotations

import lightning as L
import torch

from busseg.data.augment import BatchAugmenter
from busseg.data.preprocess import model_input
from busseg.losses import create_objective
from busseg.models import model_info
from busseg.models.checkpoint import build_model_from_recipe


def _check_model_option_names(recipe: dict) -> None:
    import inspect

    from busseg.errors import ConfigError

    parameters = inspect.signature(model_info(recipe["model"]).factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # the factory takes anything: building it (below) is the check
    options = sorted(k for k in parameters if k not in ("in_channels", "encoder_weights"))
    reserved = sorted({"in_channels", "encoder_weights"} & set(recipe["model_options"]))
    if reserved:
        raise ConfigError(f"recipe: model_options {reserved} are recipe fields of their own; set them there")
    unknown = sorted(set(recipe["model_options"]) - set(options))
    if unknown:
        raise ConfigError(f"recipe: model {recipe['model']!r} has no option(s) {unknown} (model_options); "
                          f"its options: {', '.join(options) or 'none'}")


def check_buildable(recipe: dict) -> None:
    """Build the recipe's model, objective, optimiser and learning-rate schedule on the meta
    device (no memory, no weights, the random state restored) so that a wrong model, loss or
    optimiser option is reported before any data is loaded or any epoch runs; a bad
    ``encoder_weights`` value is reported too. A plan of many runs (``benchmark run``, also
    with ``--dry-run``) calls it for every run before the first one trains."""
    from busseg.errors import ConfigError
    from busseg.models.weights import validate_weights_spec

    validate_weights_spec(recipe["encoder_weights"])
    _check_model_option_names(recipe)
    for what, build in (
        (f"model {recipe['model']!r} with model_options {recipe['model_options']}",
         lambda: build_model_from_recipe(recipe, encoder_weights="none")),
        (f"loss {recipe['loss']}", lambda: create_objective(**recipe["loss"])),
        (f"optimizer {recipe['optimizer']} with scheduler {recipe['scheduler']} of model {recipe['model']!r}",
         lambda: build_optimizer(recipe, build_model_from_recipe(recipe, encoder_weights="none").parameters())),
    ):
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                build()
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            raise ConfigError(f"recipe: {what} cannot be built ({type(exc).__name__}: {exc})") from None


def build_optimizer(recipe: dict, parameters):
    """The recipe's optimiser over ``parameters`` and its learning-rate schedule, in the form
    Lightning's ``configure_optimizers`` returns."""
    opt_cfg = dict(recipe["optimizer"])
    name = opt_cfg.pop("name")
    cls = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adamax": torch.optim.Adamax,
        "sgd": torch.optim.SGD,
    }[name]
    for key in ("betas",):
        if key in opt_cfg:
            opt_cfg[key] = tuple(opt_cfg[key])
    optimizer = cls(parameters, **opt_cfg)
    sched_cfg = dict(recipe["scheduler"])
    kind = sched_cfg.pop("name", "none")
    epochs = recipe["epochs"]
    if kind == "none":
        return optimizer
    if kind == "plateau":
        monitor = sched_cfg.pop("monitor", recipe["validation"].get("monitor", "val_loss"))
        mode = sched_cfg.pop("mode", "min" if "loss" in monitor else "max")
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, **sched_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "monitor": monitor}}
    if kind == "poly":
        power = float(sched_cfg.get("power", 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: max(0.0, 1 - e / epochs) ** power
        )
    elif kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs, eta_min=float(sched_cfg.get("eta_min", 0.0))
        )
    elif kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(sched_cfg.get("step_size", max(1, epochs // 3))),
            gamma=float(sched_cfg.get("gamma", 0.1)),
        )
    else:  # validated earlier
        raise AssertionError(kind)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def per_image_dice_iou(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard Dice and IoU per image; both masks empty count as 1 (busseg's empty-mask policy,
    as :mod:`busseg.metrics.segmentation`)."""
    pred = (torch.sigmoid(logits.float()) > threshold).flatten(1).float()
    tgt = (target > 0.5).flatten(1).float()
    inter = (pred * tgt).sum(1)
    total = pred.sum(1) + tgt.sum(1)
    union = total - inter
    ones = torch.ones_like(total)
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1e-9), ones)
    iou = torch.where(union > 0, inter / union.clamp_min(1e-9), ones)
    return dice, iou


class SegmentationTask(L.LightningModule):
    def __init__(self, recipe: dict, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"recipe": recipe})
        self.recipe = recipe
        self.model = build_model_from_recipe(recipe, encoder_weights)
        self.info = model_info(recipe["model"])
        # The objective may hold frozen networks (ACSNet's VGG LossNet); keeping it outside the
        # module tree keeps them out of checkpoints. It is moved to the device in on_fit_start.
        object.__setattr__(self, "objective", create_objective(**recipe["loss"]))
        self.augmenter = BatchAugmenter.from_recipe(recipe["augmentation"])
        self.seed = int(recipe["seed"])
        self._val: dict[str, list[torch.Tensor]] = {}

    def forward(self, images: torch.Tensor):
        return self.model(images)

    def on_fit_start(self) -> None:
        self.objective.to(self.device)

    def on_train_epoch_start(self) -> None:
        # Dropout and any other global randomness restart from (seed, epoch): a run resumed
        # from an epoch checkpoint continues exactly as the uninterrupted run would.
        torch.manual_seed(self.seed * 7919 + self.current_epoch)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # batches hold [0, 1] pixels: augmentation acts on them, normalisation follows
        if self.trainer is not None and self.trainer.training and self.augmenter.enabled:
            seed = self.seed * 1_000_003 + self.current_epoch * 10_007 + int(batch["seed_key"])
            batch["image"], batch["mask"] = self.augmenter(batch["image"], batch["mask"], seed)
        batch["image"] = model_input(batch["image"], self.recipe["normalization"], self.recipe["in_channels"])
        return batch

    def training_step(self, batch, batch_idx: int):
        out = self.model(batch["image"])
        loss, parts = self.objective(out, batch)
        bs = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Checked once per epoch, not per step: reading a GPU scalar every step would stall
        # the device queue.
        loss = self.trainer.callback_metrics.get("train_loss")
        if loss is not None and not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} in epoch {self.current_epoch}; lower the learning "
                "rate or check the data"
            )

    def validation_step(self, batch, batch_idx: int):
        out = self.model(batch["image"])
        loss, _ = self.objective(out, batch)
        bs = batch["image"].shape[0]
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        if out.seg is not None:
            dice, iou = per_image_dice_iou(out.seg, batch["mask"])
            self._val.setdefault("dice", []).append(dice)
            self._val.setdefault("iou", []).append(iou)
        if out.cls is not None:
            known = batch["label"] >= 0
            if known.any():
                correct = (out.cls.argmax(1) == batch["label"])[known].float()
                self._val.setdefault("acc", []).append(correct)

    def on_validation_epoch_end(self) -> None:
        for key, name in (("dice", "val_dice"), ("iou", "val_iou"), ("acc", "val_acc")):
            values = self._val.get(key)
            if values:
                v = torch.cat(values)
                self.log(name, v.mean(), prog_bar=True, sync_dist=True)
        self._val = {}

    def configure_optimizers(self):
        return build_optimizer(self.recipe, self.model.parameters())

