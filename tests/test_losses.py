"""Pixel losses, structure loss and the generic objectives, on hand-made cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses import create_objective, create_pixel_loss
from busseg.losses.objectives import resize_target
from busseg.losses.structure import WeightedBCELoss, WeightedIoULoss, boundary_weight
from busseg.models.output import ModelOutput

GENERIC_PIXEL_LOSSES = ("dice", "bce", "bce_dice", "jaccard", "bce_jaccard", "focal", "structure", "wbce", "wiou")


def _confident(target: torch.Tensor, margin: float = 12.0) -> torch.Tensor:
    """Logits that predict ``target`` with near-certainty."""
    return (2 * target - 1) * margin


@pytest.fixture
def target():
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 8:20, 10:24] = 1
    mask[1, 0, 2:6, 3:7] = 1  # a small lesion
    return mask


@pytest.mark.parametrize("name", GENERIC_PIXEL_LOSSES)
def test_perfect_prediction_is_near_minimum_and_gradients_flow(name, target):
    loss_fn = create_pixel_loss(name)
    perfect = loss_fn(_confident(target), target)
    inverted = loss_fn(_confident(1 - target), target)
    random_logits = torch.randn_like(target, requires_grad=True)
    random_loss = loss_fn(random_logits, target)
    assert perfect.ndim == 0 and perfect.item() >= -1e-6
    assert perfect.item() < 1e-3
    assert perfect < random_loss < inverted
    random_loss.backward()
    assert random_logits.grad is not None and random_logits.grad.abs().sum() > 0
    assert torch.isfinite(random_logits.grad).all()


@pytest.mark.parametrize("name", ("dice", "jaccard", "bce_dice", "focal", "structure"))
def test_empty_mask_predicted_empty_is_finite_and_small(name):
    empty = torch.zeros(1, 1, 16, 16)
    loss = create_pixel_loss(name)(_confident(empty), empty)
    assert torch.isfinite(loss) and loss.item() < 5e-3


def test_unsmoothed_jaccard_of_eq17_is_constant_on_empty_masks():
    empty = torch.zeros(1, 1, 16, 16)
    logits = torch.randn(1, 1, 16, 16, requires_grad=True)
    jaccard_term = create_pixel_loss("bce_jaccard", bce_weight=0.0)(logits, empty)
    jaccard_term.backward()
    assert jaccard_term.item() == pytest.approx(1.0) and logits.grad.abs().max() == 0
    smoothed = create_pixel_loss("bce_jaccard", smooth=1.0)(_confident(empty), empty)
    assert smoothed.item() < 5e-3


def test_dice_equals_one_minus_soft_dice_by_hand(target):
    logits = torch.randn_like(target)
    p = torch.sigmoid(logits)
    per_image = [
        1 - (2 * (p[b] * target[b]).sum() + 1) / (p[b].sum() + target[b].sum() + 1) for b in range(2)
    ]
    expected = torch.stack(per_image).mean()
    assert create_pixel_loss("dice")(logits, target) == pytest.approx(expected.item(), rel=1e-6)
    smooth0 = create_pixel_loss("dice", smooth=0)(logits, target)
    by_hand0 = torch.stack([1 - 2 * (p[b] * target[b]).sum() / (p[b].sum() + target[b].sum()) for b in range(2)])
    assert smooth0 == pytest.approx(by_hand0.mean().item(), rel=1e-6)


def test_dice_is_per_image_not_batch_pooled(target):
    # Predict the big lesion perfectly and miss the small one: per-image Dice averages ~0.5,
    # a batch-pooled Dice would hide the miss behind the big lesion's pixels.
    logits = _confident(target).clone()
    logits[1] = -12
    loss = create_pixel_loss("dice", smooth=0)(logits, target)
    assert loss.item() == pytest.approx(0.5, abs=1e-3)


def test_bce_matches_torch_and_combinations_add_up(target):
    logits = torch.randn_like(target)
    bce = create_pixel_loss("bce")(logits, target)
    assert bce == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)
    dice = create_pixel_loss("dice")(logits, target)
    assert create_pixel_loss("bce_dice")(logits, target) == pytest.approx((bce + dice).item(), rel=1e-6)
    weighted = create_pixel_loss("bce_dice", bce_weight=0.3, dice_weight=2.0)(logits, target)
    assert weighted == pytest.approx((0.3 * bce + 2 * dice).item(), rel=1e-6)


def test_jaccard_and_bce_jaccard_follow_eqs_16_to_18(target):
    logits = torch.randn_like(target)
    p = torch.sigmoid(logits)
    # Eq. 17, per image, no smoothing
    eq17 = torch.stack(
        [1 - (p[b] * target[b]).sum() / (p[b] + target[b] - p[b] * target[b]).sum() for b in range(2)]
    ).mean()
    # Eq. 16, as a mean over pixels
    eq16 = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    combined = create_pixel_loss("bce_jaccard")(logits, target)
    assert combined == pytest.approx((eq16 + eq17).item(), rel=1e-5)
    smooth1 = torch.stack(
        [1 - ((p[b] * target[b]).sum() + 1) / ((p[b] + target[b] - p[b] * target[b]).sum() + 1) for b in range(2)]
    ).mean()
    assert create_pixel_loss("jaccard")(logits, target) == pytest.approx(smooth1.item(), rel=1e-5)


def test_focal_with_gamma_zero_is_alpha_weighted_bce(target):
    logits = torch.randn_like(target)
    alpha = 0.25
    weights = alpha * target + (1 - alpha) * (1 - target)
    expected = F.binary_cross_entropy_with_logits(logits, target, weight=weights)
    focal = create_pixel_loss("focal", alpha=alpha, gamma=0.0)(logits, target)
    assert focal == pytest.approx(expected.item(), rel=1e-6)
    unweighted = create_pixel_loss("focal", alpha=None, gamma=0.0)(logits, target)
    assert unweighted == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)


def test_focal_down_weights_easy_pixels():
    target = torch.tensor([[[[1.0, 0.0]]]])
    easy = torch.tensor([[[[4.0, -4.0]]]])
    focal = create_pixel_loss("focal", alpha=None, gamma=2.0)
    bce = create_pixel_loss("bce")
    p_t = torch.sigmoid(torch.tensor(4.0))
    assert focal(easy, target) == pytest.approx(((1 - p_t) ** 2).item() * bce(easy, target).item(), rel=1e-5)


def test_boundary_weight_is_one_inside_and_outside_and_peaks_at_the_boundary():
    mask = torch.zeros(1, 1, 96, 96)
    mask[..., 30:66, 30:66] = 1
    weight = boundary_weight(mask)
    assert weight[0, 0, 48, 48] == pytest.approx(1.0)  # more than 15 px from the boundary
    assert weight[0, 0, 5, 5] == pytest.approx(1.0)
    assert weight[0, 0, 48, 30] == pytest.approx(1 + 5 * (1 - 16 * 31 / 961), rel=1e-5)  # straight edge
    assert weight.max() <= 6.0 and weight.min() >= 1.0
    # a lesion cut by the image border: no spurious boundary along the border
    cut = torch.zeros(1, 1, 64, 64)
    cut[..., :, :40] = 1
    assert boundary_weight(cut)[0, 0, 32, 0] == pytest.approx(1.0)
    assert boundary_weight(cut, count_include_pad=True)[0, 0, 32, 0] > 2.0


def test_structure_loss_matches_the_formula_by_hand(target):
    logits = torch.randn_like(target)
    p = torch.sigmoid(logits)
    w = 1 + 5 * (F.avg_pool2d(target, 31, 1, 15, count_include_pad=False) - target).abs()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = ((w * bce).sum((1, 2, 3)) / w.sum((1, 2, 3))).mean()
    inter = (w * p * target).sum((1, 2, 3))
    union = (w * (p + target)).sum((1, 2, 3))
    wiou = (1 - (inter + 1) / (union - inter + 1)).mean()
    assert WeightedBCELoss()(logits, target) == pytest.approx(wbce.item(), rel=1e-5)
    assert WeightedIoULoss()(logits, target) == pytest.approx(wiou.item(), rel=1e-5)
    assert create_pixel_loss("structure")(logits, target) == pytest.approx((wbce + wiou).item(), rel=1e-5)


def test_pixel_loss_options_are_validated():
    with pytest.raises(ConfigError, match="focal"):
        create_pixel_loss("focal", alpha=2.0)
    with pytest.raises(ConfigError, match="kernel_size"):
        create_pixel_loss("structure", kernel_size=30)
    with pytest.raises(ConfigError):
        create_pixel_loss("dice", weight=3)  # unknown option
    with pytest.raises(ConfigError, match="unknown pixel loss"):
        create_pixel_loss("dcie")


# ---------------------------------------------------------------- objectives


def test_segmentation_objective_with_lower_resolution_aux_maps(blob_batch):
    mask = blob_batch["mask"]
    seg = _confident(mask)
    aux = {
        "ds_quarter": torch.randn(4, 1, 16, 16, requires_grad=True),
        "ds_half": torch.randn(4, 1, 32, 32, requires_grad=True),
    }
    output = ModelOutput(seg=seg, aux=aux)
    objective = create_objective("segmentation", pixel="bce_dice", deep_supervision_weight=0.4)
    loss, parts = objective(output, blob_batch)
    pixel = create_pixel_loss("bce_dice")
    expected_aux = {
        name: pixel(logits, F.adaptive_avg_pool2d(mask, logits.shape[-2:])).item() for name, logits in aux.items()
    }
    assert set(parts) == {"seg", "aux_ds_quarter", "aux_ds_half"}
    assert parts["seg"] == pytest.approx(pixel(seg, mask).item(), rel=1e-6)
    for name, value in expected_aux.items():
        assert parts[f"aux_{name}"] == pytest.approx(value, rel=1e-6)
    assert loss.item() == pytest.approx(parts["seg"].item() + 0.4 * sum(expected_aux.values()), rel=1e-6)
    loss.backward()
    assert all(logits.grad is not None and logits.grad.abs().sum() > 0 for logits in aux.values())


def test_segmentation_objective_ignores_aux_without_deep_supervision(blob_batch):
    output = ModelOutput(seg=torch.zeros(4, 1, 64, 64), aux={"ds": torch.zeros(4, 1, 8, 8)})
    loss, parts = create_objective("segmentation", pixel="dice")(output, blob_batch)
    assert list(parts) == ["seg"]
    assert loss == pytest.approx(create_pixel_loss("dice")(output.seg, blob_batch["mask"]).item())


def test_segmentation_objective_aux_options(blob_batch):
    aux = {"edge": torch.randn(4, 1, 16, 16), "ds": torch.randn(4, 1, 16, 16)}
    output = ModelOutput(seg=torch.randn(4, 1, 64, 64), aux=aux)
    only_ds = create_objective(
        "segmentation", pixel="structure", deep_supervision_weight=1.0, aux_keys=["ds"], smooth=1.0
    )
    _, parts = only_ds(output, blob_batch)
    assert set(parts) == {"seg", "aux_ds"}
    upsampled = create_objective(
        "segmentation", pixel="bce", deep_supervision_weight=1.0, aux_target_resize="upsample_logits"
    )
    _, parts = upsampled(output, blob_batch)
    big = F.interpolate(aux["ds"], size=(64, 64), mode="bilinear", align_corners=False)
    assert parts["aux_ds"] == pytest.approx(F.binary_cross_entropy_with_logits(big, blob_batch["mask"]).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="aux_keys"):
        create_objective("segmentation", deep_supervision_weight=1.0, aux_keys=["nope"])(output, blob_batch)
    with pytest.raises(ConfigError, match="aux_target_resize"):
        create_objective("segmentation", aux_target_resize="bicubic")
    with pytest.raises(ConfigError, match="no segmentation"):
        create_objective("segmentation")(ModelOutput(seg=None, cls=torch.zeros(4, 2)), blob_batch)


def test_resize_target_keeps_small_lesions_with_area():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 13:15, 13:15] = 1  # 2x2 lesion, between the nearest sampling points at 1/8
    area = resize_target(mask, (4, 4), "area")
    nearest = resize_target(mask, (4, 4), "nearest")
    assert area.sum() * 64 == pytest.approx(4.0)  # the lesion's area is preserved
    assert nearest.sum() == 0  # nearest sampling loses it
    assert resize_target(mask, (32, 32)) is mask


def test_classification_objective_ignores_unknown_labels():
    logits = torch.randn(4, 2, requires_grad=True)
    batch = {"label": torch.tensor([0, 1, -1, 1])}
    loss, parts = create_objective("classification")(ModelOutput(seg=None, cls=logits), batch)
    expected = F.cross_entropy(logits[[0, 1, 3]], torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["cls"].item() == pytest.approx(loss.item())
    loss.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[0].abs().sum() > 0

    all_unknown = {"label": torch.tensor([-1, -1, -1, -1])}
    loss, _ = create_objective("classification")(ModelOutput(seg=None, cls=logits), all_unknown)
    assert loss.item() == 0.0 and loss.requires_grad

    weighted = create_objective("classification", class_weights=[1.0, 3.0])
    loss, _ = weighted(ModelOutput(seg=None, cls=logits), batch)
    expected = F.cross_entropy(logits[[0, 1, 3]], torch.tensor([0, 1, 1]), weight=torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="no classification"):
        create_objective("classification")(ModelOutput(seg=torch.zeros(4, 1, 8, 8)), batch)
    with pytest.raises(ConfigError, match="class_weights"):
        create_objective("classification", class_weights=[1.0])


def test_segmentation_objective_trains_a_tiny_model(blob_batch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
    )
    objective = create_objective("segmentation", pixel="structure")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss, _ = objective(ModelOutput(seg=net(blob_batch["image"])), blob_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_multitask_objective_cites_acsnets_multi_task_equation():
    # ACSNet's L_total = lambda*L_cls + (1 - lambda)*L_seg is its Eq. 13; Eq. 8 is L_cls alone.
    from busseg.losses.multitask import MultiTaskObjective

    doc = " ".join(MultiTaskObjective.__doc__.split())
    assert "ACSNet's Eq. 13" in doc and "Eq. 8 " not in doc
