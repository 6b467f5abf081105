"""DC-Net (Ning et al.): modules against their equations, variants, harmonic loss, objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses import create_objective, create_pixel_loss
from busseg.losses.dc_net import bounding_box_mask
from busseg.losses.harmonic import harmonic_loss
from busseg.models import ModelOutput, count_parameters, create_model, model_info
from busseg.models.dc_net import (
    CrossCorrelationFusion,
    DependencyAwareReinforcement,
    DifferentiableContextPooling,
    self_reversal,
)
from conftest import make_blob_batch, train_steps

SMALL = dict(
    widths=(4, 8, 8, 16, 16),
    decomposition_widths=((4, 8), (8, 8), (8, 16), (16, 8), (8, 4)),
)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return create_model("dc_net", **SMALL)


# ------------------------------------------------------------------------------ model outputs


def test_output_shapes(small_model):
    small_model.train()
    out = small_model(torch.randn(2, 1, 64, 64))
    assert isinstance(out, ModelOutput)
    assert out.seg.shape == (2, 1, 64, 64)
    assert set(out.aux) == {"saliency_fg", "saliency_bg"}
    for logits in out.aux.values():
        assert logits.shape == (2, 1, 64, 64)
    # nine aggregation units: encoder levels 1/2 … 1/16, bottleneck 1/16, decoder 1/8 … 1/1
    sizes = [32, 16, 8, 4, 4, 8, 16, 32, 64]
    for j, size in enumerate(sizes, start=1):
        att = out.extras[f"dar_attention_{j}"]
        assert att.shape == (2, 1, size, size)
        assert 0.0 <= att.min() and att.max() <= 1.0
    assert out.cls is None


def test_three_channel_input_and_registry():
    info = model_info("dc_net")
    assert info.size_divisor == 16 and info.recipe == "dc_net" and not info.multitask
    torch.manual_seed(0)
    model = create_model("dc_net", in_channels=3, **SMALL)
    assert model(torch.randn(1, 3, 32, 32)).seg.shape == (1, 1, 32, 32)


def test_bad_options_are_config_errors(small_model):
    with pytest.raises(ConfigError, match="divisible by 16"):
        small_model(torch.randn(1, 1, 40, 40))
    with pytest.raises(ConfigError, match="variant"):
        create_model("dc_net", variant="woX", **SMALL)
    with pytest.raises(ConfigError, match="pooling"):
        create_model("dc_net", pooling="lip", **SMALL)
    with pytest.raises(ConfigError, match="fusion"):
        create_model("dc_net", fusion="rmsc", **SMALL)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("dc_net", encoder_weights="imagenet", **SMALL)


def test_paper_size_parameter_count():
    # Paper: 54.4 M (widths unpublished); ours at widths 32…512 is documented as 44.8 M.
    with torch.device("meta"):  # shapes only: no 45 M weights to draw
        model = create_model("dc_net")
    n = count_parameters(model)
    assert 44.0e6 < n < 45.5e6
    assert abs(n - 54.4e6) / 54.4e6 < 0.2


# ------------------------------------------------------------------------------------- DCP


def dcp_direct_loop(z, weight, bias, context, r=2):
    """Eqs. 8–11 written out: flatten windows, U = Z̄ Δ̄ᵀ (m×m), band matrix H over the 2-D grid
    of windows, Ū = m/ΣH · (H ⊙ U) 1, one window and one channel at a time."""
    b, c, h, w = z.shape
    gh, gw = h // r, w // r
    m = gh * gw
    zpad = F.pad(z, (0, r - 1, 0, r - 1))
    out = torch.zeros(b, c, gh, gw, dtype=z.dtype)
    windows = [(gy, gx) for gy in range(gh) for gx in range(gw)]  # raster order
    H = torch.zeros(m, m, dtype=z.dtype)
    for p, (py, px) in enumerate(windows):
        for q, (qy, qx) in enumerate(windows):
            if abs(py - qy) <= context and abs(px - qx) <= context:
                H[p, q] = 1.0
    for bi in range(b):
        delta = torch.zeros(h, w, dtype=z.dtype)  # the 2×2 convolution, written out
        for i in range(h):
            for j in range(w):
                delta[i, j] = (weight[0] * zpad[bi, :, i : i + r, j : j + r]).sum() + bias[0]
        delta_bar = torch.stack(
            [delta[gy * r : gy * r + r, gx * r : gx * r + r].reshape(-1) for gy, gx in windows]
        )
        for k in range(c):
            z_bar = torch.stack(
                [z[bi, k, gy * r : gy * r + r, gx * r : gx * r + r].reshape(-1) for gy, gx in windows]
            )
            U = z_bar @ delta_bar.T
            u_bar = (m / H.sum()) * (H * U) @ torch.ones(m, 1, dtype=z.dtype)
            out[bi, k] = u_bar.view(gh, gw)
    return out


@pytest.mark.parametrize("context", [0, 1, 2])
def test_dcp_matches_direct_loop(context):
    torch.manual_seed(1)
    dcp = DifferentiableContextPooling(3, window=2, context=context).double()
    z = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    expected = dcp_direct_loop(z, dcp.kernel.weight.detach(), dcp.kernel.bias.detach(), context)
    torch.testing.assert_close(dcp(z), expected, rtol=1e-10, atol=1e-10)


def test_dcp_special_case_is_average_pooling():
    # Paper, after Eq. 10: H = identity and Δ̄ ≡ 1/r² make Eq. 9 an average pooling.
    dcp = DifferentiableContextPooling(4, context=0)
    torch.nn.init.zeros_(dcp.kernel.weight)
    torch.nn.init.constant_(dcp.kernel.bias, 0.25)
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(dcp(z), F.avg_pool2d(z, 2))


def test_dcp_softmax_kernel_is_a_convex_combination():
    torch.manual_seed(7)
    dcp = DifferentiableContextPooling(3, context=0, kernel_activation="softmax")
    z = torch.randn(2, 3, 8, 8)
    out = dcp(z)
    assert (out <= F.max_pool2d(z, 2) + 1e-6).all() and (out >= -F.max_pool2d(-z, 2) - 1e-6).all()
    torch.nn.init.zeros_(dcp.kernel.weight)  # constant kernel: softmax gives 1/r², avg pooling
    torch.testing.assert_close(dcp(z), F.avg_pool2d(z, 2))


def test_dcp_kernel_is_learned_and_input_dependent():
    torch.manual_seed(2)
    dcp = DifferentiableContextPooling(4)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    dcp(z).square().sum().backward()
    assert dcp.kernel.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="divisible by 2"):
        dcp(torch.randn(1, 4, 7, 8))


# --------------------------------------------------------------------------------- CCF, DaR


def test_ccf_against_equations():
    torch.manual_seed(3)
    ccf = CrossCorrelationFusion(6).eval()
    x_enc, x_dec = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 4, 4)
    out = ccf(x_enc, x_dec)
    assert out.shape == (2, 6, 8, 8)
    up = F.interpolate(x_dec, size=(8, 8), mode="bilinear", align_corners=False)
    M = x_enc.flatten(2) @ up.flatten(2).transpose(1, 2) / 64  # Eq. 13 (mean over pixels)
    w_e = ccf.relation_encoder.weight.view(6)
    w_d = ccf.relation_decoder.weight.view(6)
    omega_e = M @ w_e + ccf.relation_encoder.bias  # ρ on rows M[p, :]
    omega_d = M.transpose(1, 2) @ w_d + ccf.relation_decoder.bias  # ρ on columns M[:, q]
    fused = torch.cat([omega_e[..., None, None] * x_enc, omega_d[..., None, None] * up], 1)
    torch.testing.assert_close(out, ccf.merge(fused))


def test_dar_shapes_and_reversed_background():
    torch.manual_seed(4)
    dar = DependencyAwareReinforcement(8)
    fg, bg = torch.rand(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    out, attention = dar(fg, bg)
    assert out.shape == (2, 16, 6, 6) and attention.shape == (2, 1, 6, 6)
    assert ((attention > 0) & (attention < 1)).all()
    # with the reinforcement branch silenced the output is F^f ⊕ φ(F^b) (Eq. 17's residual)
    torch.nn.init.zeros_(dar.expand[0].weight)
    torch.nn.init.zeros_(dar.expand[1].bias)
    out, _ = dar(fg, bg)
    torch.testing.assert_close(out, torch.cat([fg, self_reversal(bg)], 1))


def test_self_reversal():
    x = torch.randn(2, 3, 5, 5)
    rev = self_reversal(x)
    assert (rev >= 0).all()
    torch.testing.assert_close(rev.amin(dim=(-2, -1)), torch.zeros(2, 3))
    torch.testing.assert_close(rev + x, x.amax(dim=(-2, -1), keepdim=True).expand_as(x))


# -------------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "woB"},
        {"variant": "woF"},
        {"variant": "woC"},
        {"variant": "woD"},
        {"pooling": "max"},
        {"pooling": "avg"},
        {"pooling": "strided_conv"},
        {"pooling_context": 0},
        {"fusion": "concat"},
        {"fusion": "add"},
        {"fusion": "none"},
        {"dcp_kernel": "softmax", "ccf_weights": "sigmoid"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_variant_builds_and_trains_a_step(options):
    torch.manual_seed(5)
    model = create_model("dc_net", **SMALL, **options)
    objective = create_objective("dc_net")
    batch = make_blob_batch(2, 32, 1, seed=1)
    out = model(batch["image"])
    assert out.seg.shape == (2, 1, 32, 32)
    has_saliency = options.get("variant") != "woC"
    assert bool(out.aux) == has_saliency
    assert bool(out.extras) == (options.get("variant") not in ("woB", "woF", "woC", "woD"))
    loss, parts = objective(out, batch)
    assert ("saliency_fg" in parts) == has_saliency
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    torch.optim.Adam(model.parameters(), 1e-3).step()


def test_variants_drop_the_right_parts():
    full = create_model("dc_net", **SMALL)
    wo_b = create_model("dc_net", variant="woB", **SMALL)
    wo_c = create_model("dc_net", variant="woC", **SMALL)
    wo_d = create_model("dc_net", variant="woD", **SMALL)
    assert full.decomposition is not None and full.coupling.coupler
    assert wo_b.decomposition is not None and not wo_b.coupling.coupler
    assert wo_c.decomposition is None and not wo_c.coupling.coupler
    assert wo_d.coupling.coupler and all(a.dar is None for a in wo_d.coupling.aggregation)
    assert count_parameters(wo_d) < count_parameters(full)


def test_a_few_steps_on_phantom_data_lower_the_loss():
    torch.manual_seed(6)
    model = create_model(
        "dc_net",
        widths=(8, 8, 16, 16, 32),
        decomposition_widths=((8, 8), (8, 16), (16, 16), (16, 8), (8, 8)),
    )
    objective = create_objective("dc_net")
    batch = make_blob_batch(2, 64, 1, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [step["total"] for step in train_steps(model, objective, batch, optimizer, steps=8)]
    assert losses[-1] < 0.85 * losses[0], losses


# --------------------------------------------------------------------------- harmonic loss


def _logit(pt: torch.Tensor) -> torch.Tensor:
    return torch.log(pt) - torch.log1p(-pt)


PT = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.75, 0.9], dtype=torch.float64)


def test_harmonic_is_registered_and_matches_eq26():
    loss = create_pixel_loss("harmonic", alpha=0.25, gamma=5, sigma=1e-3, reduction="none")
    pt = PT.view(1, 1, 2, 3)
    # a foreground pixel with probability p_t and a background pixel with probability 1 − p_t
    fg = loss(_logit(pt), torch.ones_like(pt))
    bg = loss(-_logit(pt), torch.zeros_like(pt))
    a = 1 - pt
    eq26 = -(1 + 1e-3) * a**4 / (1e-3 + a**5) * torch.log(pt)
    torch.testing.assert_close(fg, 0.25 * eq26)
    torch.testing.assert_close(bg, 0.75 * eq26)


def test_harmonic_limits_p2_p3():
    z, y = _logit(PT), torch.ones_like(PT)
    ce_modulated = -torch.log(PT) / (1 - PT)  # P-2: σ → 0
    focal_shifted = -(1 - PT) ** 4 * torch.log(PT)  # P-3: σ → ∞, γ = 5
    for sigma in (1e-12, 1e-14):  # relative error of the limit is σ / (1 − p_t)^γ
        got = harmonic_loss(z, y, alpha=None, gamma=5, sigma=sigma, reduction="none")
        torch.testing.assert_close(got, ce_modulated, rtol=1e-6, atol=0)
    exact_zero = harmonic_loss(z, y, alpha=None, gamma=5, sigma=0.0, reduction="none")
    torch.testing.assert_close(exact_zero, ce_modulated)
    for sigma in (1e9, 1e12):  # relative error (1 − p_t)^γ / σ
        got = harmonic_loss(z, y, alpha=None, gamma=5, sigma=sigma, reduction="none")
        torch.testing.assert_close(got, focal_shifted, rtol=1e-6, atol=0)


def test_harmonic_is_not_clamped_and_keeps_hard_pixel_gradients():
    pt = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.7, 0.95, 0.99], dtype=torch.float64)
    z = _logit(pt).requires_grad_()
    loss = harmonic_loss(z, torch.ones_like(z), alpha=None, reduction="none")
    assert loss[0] > 4.0  # −log(0.01) ≈ 4.6: no clamp at 1 as in the released code
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert (grad[:5].abs() > 0.2).all(), grad  # hard and low-confidence pixels keep a gradient
    # compared with focal loss (γ = 5) it lifts the gradient of low-confidence pixels (P-4/P-5)
    zf = z.detach().clone().requires_grad_()
    p = torch.sigmoid(zf)
    (focal_grad,) = torch.autograd.grad((-(1 - p) ** 5 * torch.log(p)).sum(), zf)
    assert (grad[2:5].abs() > focal_grad[2:5].abs()).all()
    # and suppresses easy pixels compared with cross-entropy (whose gradient is −(1 − p_t))
    assert (grad[5:].abs() < (1 - pt[5:])).all()


def test_harmonic_is_stable_for_extreme_logits():
    z = torch.tensor([-300.0, -50.0, 0.0, 50.0, 300.0], requires_grad=True)
    for sigma in (0.0, 1e-3):
        for y in (torch.zeros(5), torch.ones(5)):
            loss = harmonic_loss(z, y, sigma=sigma, reduction="sum")
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
    with pytest.raises(ConfigError):
        create_pixel_loss("harmonic", sigma=-1.0)


# ------------------------------------------------------------------------------- objective


def test_objective_terms_and_background_target():
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 4:10, 3:8] = 1
    mask[1, :, 8:14, 8:15] = 1
    perfect = 30 * (2 * mask - 1)
    batch = {"mask": mask, "label": torch.tensor([0, 1])}
    objective = create_objective("dc_net")
    # S^b is compared with 1 − Y: perfect saliency maps cost (almost) nothing
    out = ModelOutput(seg=perfect, aux={"saliency_fg": perfect, "saliency_bg": -perfect})
    loss, parts = objective(out, batch)
    assert parts["saliency_fg"] < 1e-6 and parts["saliency_bg"] < 1e-6
    assert loss < 1e-4
    # a background map equal to the foreground map is maximally wrong
    swapped = ModelOutput(seg=perfect, aux={"saliency_fg": perfect, "saliency_bg": perfect})
    loss_swapped, parts_swapped = objective(swapped, batch)
    assert parts_swapped["saliency_bg"] > 0.95
    torch.testing.assert_close(loss_swapped - loss, 0.5 * (parts_swapped["saliency_bg"] - parts["saliency_bg"]))
    # L = λ3 (Dice + λ4 L_h) on the segmentation alone when there are no saliency maps (woC)
    seg = torch.randn(2, 1, 16, 16)
    loss_c, parts_c = objective(ModelOutput(seg=seg), batch)
    assert set(parts_c) == {"seg_dice", "seg_harmonic"}
    expected = create_pixel_loss("dice")(seg, mask) + 10 * harmonic_loss(seg, mask)
    torch.testing.assert_close(loss_c, expected)


def test_bounding_box_target():
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 1, 2] = mask[0, 0, 5, 6] = 1  # two lesion pixels: box rows 1–5, cols 2–6
    box = bounding_box_mask(mask)
    expected = torch.zeros(8, 8)
    expected[1:6, 2:7] = 1
    torch.testing.assert_close(box[0, 0], expected)
    assert box[1].sum() == 0  # no lesion, empty box
    objective = create_objective("dc_net", saliency_target="bbox")
    out = ModelOutput(seg=torch.zeros(2, 1, 8, 8), aux={
        "saliency_fg": 30 * (2 * box - 1), "saliency_bg": -30 * (2 * box - 1)})
    _, parts = objective(out, {"mask": mask, "label": torch.tensor([0, 0])})
    assert parts["saliency_fg"] < 1e-6 and parts["saliency_bg"] < 1e-6


def test_dc_net_exports_to_onnx(tmp_path):
    """DCP's neighbourhood sum must survive ONNX export (``divisor_override`` does not)."""
    from busseg.engine.recipe import apply_overrides, load_recipe
    from busseg.inference.export import export_onnx
    from busseg.models import create_model

    recipe = apply_overrides(load_recipe("dc_net"), [
        "image_size=32", "model_options.widths=[4,4,8,8,8]",
        "model_options.decomposition_widths=[[4,4],[4,8],[8,8],[8,4],[4,4]]"])
    torch.manual_seed(0)
    model = create_model("dc_net", in_channels=1, **recipe["model_options"])
    result = export_onnx(model, recipe, tmp_path / "dc_net.onnx", check_batch_sizes=(1, 2))
    assert (tmp_path / "dc_net.onnx").is_file()
    assert max(result.max_abs_diff.values()) < 1e-3
