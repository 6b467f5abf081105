"""Precise BatchNorm statistics (busseg.engine.batchnorm) and the recipe option that uses them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from busseg.data.splits import fold_ids, load_split
from busseg.engine.batchnorm import batchnorm_layers, recompute_batchnorm_statistics
from busseg.engine.data import InMemoryTensors, make_loader
from busseg.models.checkpoint import load_checkpoint
from busseg.engine.recipe import validate_recipe
from busseg.engine.train import load_dataset, train_fold
from busseg.errors import ConfigError
from busseg.models import ModelOutput, list_models, register_model


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(2),
    )


def _lagging_net(batches) -> nn.Sequential:
    """A net trained a few steps at a high learning rate: its running statistics lag."""
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for x in batches:
        opt.zero_grad()
        (net(x) - 3.0).square().mean().backward()
        opt.step()
    return net


def test_recompute_averages_batch_statistics_with_current_weights():
    g = torch.Generator().manual_seed(1)
    batches = [2 + 3 * torch.randn(4, 1, 8, 8, generator=g) for _ in range(3)]
    net = _lagging_net(batches)
    first_bn = net[2]
    # what the first BatchNorm sees in eval mode (no dropout), batch by batch
    feats = [net[0](x).detach() for x in batches]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.transpose(0, 1).flatten(1).var(1, unbiased=True) for f in feats]).mean(0)
    assert not torch.allclose(first_bn.running_mean, expected_mean, atol=1e-3)  # stale before

    net.train()
    rng = torch.get_rng_state()
    used = recompute_batchnorm_statistics(net, iter(batches))
    assert used == 3
    torch.testing.assert_close(first_bn.running_mean, expected_mean)
    torch.testing.assert_close(first_bn.running_var, expected_var)
    # dropout stayed off (no random number drawn), modes and momenta are restored
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in net.modules())
    assert all(bn.momentum == 0.1 for bn in batchnorm_layers(net))

    # with one batch, eval mode now reproduces the batch-statistics output (dropout aside)
    net.eval()
    recompute_batchnorm_statistics(net, [batches[0]])
    net[1].p = 0.0
    eval_out = net(batches[0])
    net.train()
    train_out = net(batches[0])
    torch.testing.assert_close(eval_out, train_out, rtol=5e-3, atol=5e-3)


def test_max_batches_nothing_to_do_and_errors():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(5)]
    net = _lagging_net(batches)
    assert recompute_batchnorm_statistics(net, iter(batches), max_batches=2) == 2
    assert int(net[2].num_batches_tracked) == 2
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_batchnorm_statistics(net, iter([])) == 0  # no batch: statistics kept
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert recompute_batchnorm_statistics(nn.Conv2d(1, 1, 3), iter(batches)) == 0
    with pytest.raises(ConfigError, match="batches"):
        recompute_batchnorm_statistics(net, iter(batches), max_batches=0)


# ------------------------------------------------------------------ the recipe option in training


class _BNSegNet(nn.Module):
    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        return ModelOutput(seg=self.head(self.body(x)))


if "test_tiny_bn" not in list_models():
    @register_model("test_tiny_bn", paper="test fixture", recipe="test_tiny_bn", size_divisor=8)
    def _tiny_bn(in_channels=1, encoder_weights="none"):
        return _BNSegNet(in_channels)


def _recipe(**changes) -> dict:
    recipe = {
        "model": "test_tiny_bn", "image_size": 32, "epochs": 1, "batch_size": 4,
        "optimizer": {"name": "adam", "lr": 0.05}, "loss": {"name": "segmentation", "pixel": "bce_dice"},
        "cv_folds": 2, "seed": 5,
    }
    recipe.update(changes)
    return validate_recipe(recipe, "test")


def _statistics(path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(path)
    return {k: v for k, v in model.state_dict().items() if "running" in k}


def test_precise_bn_option_recalibrates_the_scored_checkpoint(tmp_path):
    recipe = _recipe(precise_bn={"batches": 2})
    out = tmp_path / "precise"
    train_fold(recipe, out, data_options={"n": 24}, progress=False, accelerator="cpu")
    run = json.loads((out / "run.json").read_text())
    assert run["batchnorm_statistics"].startswith("precise") and "2 training batches" in run["batchnorm_statistics"]
    # the statistics in the selected checkpoint are those of its own weights over the same batches
    prepared = load_dataset("phantom", None, recipe, {"n": 24})
    split = load_split(out / "split.json", prepared.records)
    train_ids, val_ids, _ = fold_ids(split, 0)
    tensors = InMemoryTensors(prepared.subset(train_ids + val_ids), recipe["normalization"])
    loader = make_loader(tensors, train_ids, 4, shuffle=True, seed=recipe["seed"], drop_last=True)
    model, _ = load_checkpoint(out / "checkpoints" / "best.ckpt")
    stored = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert recompute_batchnorm_statistics(model, (b["image"] for b in loader), 2) == 2
    for key, value in model.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(stored[key], value, msg=key)

    # without the option the stored statistics are the training-time running averages
    plain = tmp_path / "plain"
    train_fold(_recipe(), plain, data_options={"n": 24}, progress=False, accelerator="cpu")
    assert json.loads((plain / "run.json").read_text())["batchnorm_statistics"].startswith("running")
    model, _ = load_checkpoint(plain / "checkpoints" / "best.ckpt")
    stale = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")}
    recompute_batchnorm_statistics(model, (b["image"] for b in loader), 2)
    assert any(not torch.allclose(stale[k], model.state_dict()[k], atol=1e-4) for k in stale)


def test_precise_bn_recipe_field_is_checked():
    assert _recipe()["precise_bn"] is None
    assert _recipe(precise_bn={"batches": None})["precise_bn"] == {"batches": None}
    with pytest.raises(ConfigError, match="precise_bn.batches"):
        _recipe(precise_bn={"batches": 0})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \[.batchs.\] in precise_bn"):
        _recipe(precise_bn={"batchs": 3})
    with pytest.raises(ConfigError, match="precise_bn"):
        _recipe(precise_bn=True)
