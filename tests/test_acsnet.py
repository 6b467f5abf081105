"""ACSNet (He et al. 2024): model, Table-1 variants, gate/DSA modules, LossNet, objective."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses import create_objective
from busseg.losses.acsnet import ACSNetObjective, LossNet, soft_dice_loss
from busseg.models import create_model, list_models, model_info
from busseg.models.acsnet import (
    VARIANTS,
    DSAModule,
    GateUnit,
    ModulatedDeformConvUnit,
)
from busseg.models.layers import SqueezeExcitation
from busseg.models.output import ModelOutput
from conftest import make_blob_batch, train_steps

REGISTERED_NAME = {"unet": "acsnet_unet", "clsnet": "acsnet_clsnet"}


def build(variant: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    name = REGISTERED_NAME.get(variant, "acsnet")
    if name == "acsnet":
        options["variant"] = variant
    return create_model(name, **options)


@pytest.fixture(scope="module")
def full_model():
    return build("acsnet")


@pytest.fixture(scope="module")
def random_lossnet():
    torch.manual_seed(0)
    return LossNet(weights="none")


@pytest.fixture(scope="module")
def objective_without_lossnet():
    return ACSNetObjective(lossnet_weight=0.0)


# ----------------------------------------------------------------------------- model
def test_outputs_have_contract_shapes(full_model):
    images = make_blob_batch(2, 64)["image"]
    out = full_model(images)
    assert isinstance(out, ModelOutput)
    assert out.seg.shape == (2, 1, 64, 64)
    assert out.cls.shape == (2, 2)
    # five gates (four skips + bottleneck), DSA attention maps at stages 6 and 7
    assert {k for k in out.extras if k.startswith("gate_")} == {f"gate_stage{i}" for i in range(1, 6)}
    assert out.extras["dsa_attention_stage6"].shape == (2, 2, 4, 4)
    assert out.extras["dsa_attention_stage7"].shape == (2, 2, 8, 8)
    gates = torch.stack([out.extras[f"gate_stage{i}"] for i in range(1, 6)])
    assert gates.min() >= 0 and gates.max() <= 1


def test_size_matches_the_documented_count_and_deformable_flops_are_counted(full_model):
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.ops import DeformConv2d

    from busseg.models import count_parameters

    assert count_parameters(full_model) == 31_779_249  # documented in the model docstring
    conv = DeformConv2d(8, 4, 3, padding=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        conv(torch.randn(2, 8, 5, 6), torch.zeros(2, 18, 5, 6))
    assert counter.get_total_flops() == 2 * (2 * 4 * 8 * 9 * 5 * 6)  # 1 MAC = 2 FLOPs


def test_three_channel_input_and_non_square_size():
    model = build("cunet", in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.seg.shape == (1, 1, 64, 96) and out.cls.shape == (1, 2)


def test_registry_flags_tell_the_engine_what_each_model_predicts():
    assert {"acsnet", "acsnet_unet", "acsnet_clsnet"} <= set(list_models())
    assert model_info("acsnet").multitask and model_info("acsnet").segments
    assert not model_info("acsnet_unet").multitask and model_info("acsnet_unet").segments
    assert model_info("acsnet_clsnet").multitask and not model_info("acsnet_clsnet").segments
    for bad, hint in (("unet", "acsnet_unet"), ("clsnet", "acsnet_clsnet"), ("nope", "choose")):
        with pytest.raises(ConfigError, match=hint):
            create_model("acsnet", variant=bad)
    with pytest.raises(ConfigError, match="dsa_stages"):
        create_model("acsnet", dsa_stages=(5,))


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_ablation_network_has_its_components_and_trains_a_step(variant, objective_without_lossnet):
    cfg = VARIANTS[variant]
    model = build(variant)
    assert _count(model, GateUnit) == (5 if cfg.gates else 0)
    assert _count(model, DSAModule) == (2 if cfg.dsa else 0)
    n_inputs = {"none": 0, "single": 1, "multi": 3}[cfg.classifier]
    assert _count(model, SqueezeExcitation) == (n_inputs if cfg.channel_attention else 0)
    if cfg.classifier != "none":
        assert model.classification_head.classifier[0].in_features == {1: 512, 3: 1280}[n_inputs]

    batch = make_blob_batch(2, 32, seed=1)
    out = model(batch["image"])
    assert (out.seg is not None) == cfg.segment
    assert (out.cls is not None) == (cfg.classifier != "none")
    loss, parts = objective_without_lossnet(out, batch)
    assert torch.isfinite(loss)
    assert ("loss_cls" in parts) == (out.cls is not None)
    assert ("loss_dice" in parts) == (out.seg is not None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    # timm zero-initialises the last BN of each random residual block, so only part of the
    # encoder moves in the first step; every parameter outside it must.
    assert {n for n in before if not n.startswith("encoder.")} <= changed
    assert any(n.startswith("encoder.") for n in changed)


def test_deformable_offsets_and_modulation_receive_gradients(full_model):
    full_model.zero_grad()
    batch = make_blob_batch(2, 32, seed=2)
    out = full_model(batch["image"])
    (out.seg.sigmoid().mean() + out.cls.sum()).backward()
    units = [m for m in full_model.modules() if isinstance(m, ModulatedDeformConvUnit)]
    assert len(units) == 4
    for unit in units:
        grad = unit.offset_mask.weight.grad
        k = unit.kernel_points
        assert grad[: 2 * k].abs().sum() > 0, "offset predictor got no gradient"
        assert grad[2 * k :].abs().sum() > 0, "modulation predictor got no gradient"
    full_model.zero_grad()


# ----------------------------------------------------------------------------- modules
def test_gate_unit_follows_equations_1_to_3():
    torch.manual_seed(0)
    gate = GateUnit(16).eval()
    x = torch.randn(3, 16, 8, 8)
    y, values = gate(x)
    maps = torch.sigmoid(gate.gate_maps(x))
    g1 = maps[:, 0].flatten(1).mean(1)  # Eq. 1: GAP
    g2 = maps[:, 1].flatten(1).max(1).values  # Eq. 2: GMP
    assert torch.allclose(values, torch.stack([g1, g2], 1))
    expected = gate.output_conv(x * g1.view(-1, 1, 1, 1) + x * g2.view(-1, 1, 1, 1))  # Eq. 3
    assert torch.allclose(y, expected, atol=1e-6)
    assert y.shape == x.shape


def test_deformable_unit_starts_as_a_regular_convolution_with_modulation_half():
    torch.manual_seed(0)
    unit = ModulatedDeformConvUnit(4, 6, norm=None)
    x = torch.randn(2, 4, 9, 7)
    expected = F.relu(F.conv2d(x, 0.5 * unit.deform.weight, padding=1))
    assert torch.allclose(unit(x), expected, atol=1e-5)
    # a learned offset moves the sampling grid: shifting every tap by one pixel to the right
    with torch.no_grad():
        unit.offset_mask.bias[1 : 2 * unit.kernel_points : 2] = 1.0  # (dy, dx) pairs: dx = 1
    # output column j now reads columns j..j+2 (zeros outside the image): a dense convolution
    # with one extra column of padding on each side, read one column further right
    shifted = F.relu(F.conv2d(x, 0.5 * unit.deform.weight, padding=(1, 2))[..., 2:])
    assert torch.allclose(unit(x), shifted, atol=1e-5)


def test_dsa_module_follows_equations_4_to_7():
    torch.manual_seed(0)
    dsa = DSAModule(8, norm=None)
    x = torch.randn(2, 8, 6, 6)
    y, attention = dsa(x)
    deformed = dsa.deform_in(x)  # Eq. 4
    s1 = torch.sigmoid(dsa.avg_attention(deformed.mean(1, keepdim=True)))  # Eq. 5
    s2 = torch.sigmoid(dsa.max_attention(deformed.max(1, keepdim=True).values))  # Eq. 6
    expected = dsa.deform_out(torch.cat([deformed * s1, deformed * s2], 1))  # Eq. 7
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(attention, torch.cat([s1, s2], 1))
    assert y.shape == x.shape


# ----------------------------------------------------------------------------- LossNet
def test_lossnet_is_frozen_and_passes_gradients_to_the_prediction(random_lossnet):
    lossnet = random_lossnet
    assert [len(b) for b in lossnet.blocks] == [4, 5, 7, 7]  # up to relu1_2, 2_2, 3_3, 4_3
    assert all(not p.requires_grad for p in lossnet.parameters())
    lossnet.train()
    assert not any(m.training for m in lossnet.blocks.modules())
    mask = make_blob_batch(2, 32, seed=3)["mask"]
    assert lossnet(mask, mask).item() == 0.0
    prediction = torch.full_like(mask, 0.5, requires_grad=True)
    loss = lossnet(prediction, mask)
    loss.backward()
    assert loss.item() > 0 and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in lossnet.parameters())
    # Eq. 10-11 by hand: sum over the four blocks of the mean squared feature difference
    a, b = prediction.detach().expand(-1, 3, -1, -1), mask.expand(-1, 3, -1, -1)
    by_hand = 0.0
    for block in lossnet.blocks:
        a, b = block(a), block(b)
        by_hand += ((a - b) ** 2).mean().item()
    assert math.isclose(loss.item(), by_hand, rel_tol=1e-5)


def test_objective_without_pretrained_vgg_warns_and_records_gamma_zero(caplog):
    with caplog.at_level(logging.WARNING, logger="busseg"):
        objective = create_objective("acsnet")  # tests are offline: VGG-16 is random
    assert objective.lossnet is None
    info = objective.describe()
    assert info["lossnet_gamma_requested"] == 0.2 and info["lossnet_gamma_effective"] == 0.0
    assert info["lossnet_weights"]["used"] == "random"
    assert "LossNet" in caplog.text
    batch = make_blob_batch(2, 32)
    _, parts = objective(ModelOutput(seg=torch.zeros(2, 1, 32, 32), cls=torch.zeros(2, 2)), batch)
    assert parts["lossnet_gamma"].item() == 0.0 and "loss_lossnet" not in parts
    with pytest.raises(ConfigError, match="cls_weight"):
        create_objective("acsnet", cls_weight=1.5)


# ----------------------------------------------------------------------------- objective
def test_multitask_loss_equals_its_formula_on_a_hand_made_case(random_lossnet):
    lam, gamma = 0.3, 0.2
    objective = ACSNetObjective(cls_weight=lam, lossnet_weight=0.0)
    objective.lossnet = random_lossnet  # reuse the module's VGG-16 (built once)
    objective.lossnet_gamma_effective = gamma
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 2:6] = 1  # 16 lesion pixels; image 1 has none
    seg_logits = torch.zeros(2, 1, 8, 8)  # p = 0.5 everywhere
    cls_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, 1, -1])  # the third (unknown) must not count
    out = ModelOutput(seg=seg_logits, cls=cls_logits[:2])
    batch = {"mask": mask, "label": labels[:2]}
    total, parts = objective(out, batch)

    dice_0 = 1 - (2 * 0.5 * 16 + 1) / (0.5 * 64 + 16 + 1)  # Eq. 9, image 0
    dice_1 = 1 - (0 + 1) / (0.5 * 64 + 0 + 1)  # Eq. 9, empty mask
    l_dice = (dice_0 + dice_1) / 2
    l_cls = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2  # Eq. 8
    l_lossnet = random_lossnet(torch.full_like(mask, 0.5), mask).item()
    expected = lam * l_cls + (1 - lam) * (l_dice + gamma * l_lossnet)  # Eqs. 12-13
    assert math.isclose(parts["loss_dice"].item(), l_dice, rel_tol=1e-6)
    assert math.isclose(parts["loss_cls"].item(), l_cls, rel_tol=1e-6)
    assert math.isclose(total.item(), expected, rel_tol=1e-5)
    # unknown labels are ignored: adding an unlabelled sample leaves L_cls unchanged
    assert math.isclose(
        objective.classification_loss(cls_logits, labels).item(), l_cls, rel_tol=1e-6
    )
    # a batch without any known label gives L_cls = 0 and still back-propagates
    zero = objective.classification_loss(cls_logits.requires_grad_(), torch.full((3,), -1))
    zero.backward()
    assert zero.item() == 0.0


def test_single_task_variants_use_their_own_loss_only(objective_without_lossnet):
    batch = make_blob_batch(2, 16)
    seg = torch.randn(2, 1, 16, 16)
    cls = torch.randn(2, 2)
    seg_only, _ = objective_without_lossnet(ModelOutput(seg=seg), batch)
    cls_only, _ = objective_without_lossnet(ModelOutput(seg=None, cls=cls), batch)
    assert torch.isclose(seg_only, soft_dice_loss(seg.sigmoid(), batch["mask"]))
    assert torch.isclose(cls_only, F.cross_entropy(cls, batch["label"]))


def test_training_steps_on_phantoms_lower_both_task_losses():
    torch.set_num_threads(1)
    model = build("acsnet", seed=0)
    objective = ACSNetObjective(lossnet_weight=0.0)
    batch = make_blob_batch(2, 32, seed=5)  # labels [1, 0]
    assert set(batch["label"].tolist()) == {0, 1}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = train_steps(model, objective, batch, opt, steps=10)
    assert history[-1]["total"] < history[0]["total"]
    assert history[-1]["loss_dice"] < history[0]["loss_dice"]
    assert history[-1]["loss_cls"] < history[0]["loss_cls"]


def test_recipes_hold_the_papers_settings_and_serve_all_three_models():
    from busseg.engine.recipe import load_recipe

    busi, udiat = load_recipe("acsnet"), load_recipe("acsnet_udiat")
    assert (busi["epochs"], busi["batch_size"], udiat["epochs"], udiat["batch_size"]) == (100, 16, 90, 4)
    for recipe in (busi, udiat):
        assert recipe["optimizer"] == {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 1e-4}
        assert recipe["loss"]["cls_weight"] == 0.3 and recipe["loss"]["lossnet_weight"] == 0.2
        assert recipe["augmentation"]["rotate_deg"] == [10, 30] and recipe["image_size"] == 256
        # the authors' LambdaLR, lr0 * (0.1 + 0.9 * (1 + cos(pi e / E)) / 2), is cosine annealing to 0.1 lr0
        assert recipe["scheduler"] == {"name": "cosine", "eta_min": 0.1 * recipe["optimizer"]["lr"]}
        assert recipe["validation"]["fraction"] > 0  # selection never on the test fold
    for name in ("acsnet", "acsnet_unet", "acsnet_clsnet"):
        assert model_info(name).recipe == "acsnet"
        create_model(name, in_channels=busi["in_channels"], encoder_weights="none", **busi["model_options"])


# ----------------------------------------------------------------------------- authors' forms
def _kernel_sizes(stage):
    return [m.kernel_size for m in stage.convs.modules() if isinstance(m, torch.nn.Conv2d)]


def test_stage_9_is_a_1x1_then_a_3x3_convolution_as_in_the_authors_code():
    model = build("acsnet")
    stages = model.decoder.stages
    assert [_kernel_sizes(s) for s in stages[:3]] == [[(3, 3), (3, 3)]] * 3
    assert _kernel_sizes(stages[3]) == [(1, 1), (3, 3)]
    # the two-3x3 reading stays available
    model = build("acsnet", last_stage_kernels=(3, 3))
    assert _kernel_sizes(model.decoder.stages[3]) == [(3, 3), (3, 3)]
    with pytest.raises(ConfigError, match="last_stage_kernels"):
        build("acsnet", last_stage_kernels=(5, 3))


def test_avg_max_channel_attention_is_the_authors_option():
    from busseg.models.acsnet import AvgMaxChannelAttention

    model = build("acsnet", channel_attention="avg_max")
    assert _count(model, AvgMaxChannelAttention) == 3 and _count(model, SqueezeExcitation) == 0
    assert _count(build("acsnet"), SqueezeExcitation) == 3  # the paper's SE reading stays default
    with pytest.raises(ConfigError, match="channel_attention"):
        build("acsnet", channel_attention="max")

    torch.manual_seed(0)
    block = AvgMaxChannelAttention(32, reduction=16)
    x = torch.rand(2, 32, 5, 7)
    with torch.no_grad():
        descriptor = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # [B, 2C]
        weights = torch.sigmoid(block.fc2(F.relu(block.fc1(descriptor))))
        expected = x * weights[:, :, None, None]
        torch.testing.assert_close(block(x), expected)
    assert block.fc1.in_features == 64 and block.fc1.out_features == 2
    # max pooling matters: two inputs with the same channel means but different peaks differ
    with torch.no_grad():
        block.fc1.weight.fill_(0.1)  # keep the hidden units active (ReLU)
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    y[:, :, 0, 1] -= 1.0
    with torch.no_grad():
        assert not torch.allclose(block(x)[:, :, 2:, 2:], block(y)[:, :, 2:, 2:])
