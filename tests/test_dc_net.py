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
    SegmentationHead,
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


def test_output_shapes():
    torch.manual_seed(0)
    text_layout = create_model("dc_net", dar_layout="all", **SMALL).train()
    out = text_layout(torch.randn(2, 1, 64, 64))
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
    """CCF's ρ is a dense Conv1d(c, c, kernel c) per side (authors' code): 2c³ + 2c weights per
    CCF, ≈ 35 M in the first one (c = 256). Totals of both DaR layouts are pinned (see the
    module docstring for how they compare with the paper's 54.4 M)."""
    with torch.device("meta"):  # shapes only: nothing to draw
        authors = create_model("dc_net")
        text = create_model("dc_net", dar_layout="all")
    for block, c in zip(authors.coupling.decoder, (256, 128, 64, 32)):
        ccf = block.fusion
        assert count_parameters(ccf.relation_encoder) == count_parameters(ccf.relation_decoder) == c**3 + c
    assert 34.5e6 < count_parameters(authors.coupling.decoder[0].fusion) < 35.0e6
    n_authors, n_text = count_parameters(authors), count_parameters(text)
    assert 72.2e6 < n_authors < 72.5e6, n_authors
    assert 83.0e6 < n_text < 83.3e6, n_text
    # the light units hold no parameters beyond their two embeddings
    assert n_text - n_authors == sum(
        count_parameters(unit.dar) for j, unit in enumerate(text.coupling.aggregation) if j != 4
    )


def test_dar_layouts():
    torch.manual_seed(0)
    authors = create_model("dc_net", **SMALL).train()  # default: full DaR at the bottleneck only
    text = create_model("dc_net", dar_layout="all", **SMALL).train()
    x = torch.randn(2, 1, 32, 32)
    assert set(authors(x).extras) == {"dar_attention_5"}
    assert set(text(x).extras) == {f"dar_attention_{j}" for j in range(1, 10)}
    kinds = [type(unit.dar).__name__ for unit in authors.coupling.aggregation]
    assert kinds == ["LightReinforcement"] * 4 + ["DependencyAwareReinforcement"] + ["LightReinforcement"] * 4
    with pytest.raises(ConfigError, match="dar_layout"):
        create_model("dc_net", dar_layout="some", **SMALL)


# ------------------------------------------------------------------------------------- DCP


def _reflect(i: int, n: int) -> int:
    """Index i of a grid of n after reflect padding (replicate when the grid is too small)."""
    if n == 1:
        return 0
    while not 0 <= i < n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def dcp_direct_loop(z, weight, bias, context, r=2):
    """Eqs. 8–11 written out: flatten windows, U = Z̄ Δ̄ᵀ (m×m), H over the 2-D grid of windows
    reflect-padded at the border (so H counts (2τ+1)² neighbours in every row and m/ΣH is the
    constant 1/(2τ+1)²), Ū = m/ΣH · (H ⊙ U) 1, one window and one channel at a time."""
    b, c, h, w = z.shape
    gh, gw = h // r, w // r
    m = gh * gw
    zpad = F.pad(z, (0, r - 1, 0, r - 1))
    out = torch.zeros(b, c, gh, gw, dtype=z.dtype)
    windows = [(gy, gx) for gy in range(gh) for gx in range(gw)]  # raster order
    H = torch.zeros(m, m, dtype=z.dtype)
    for p, (py, px) in enumerate(windows):
        for dy in range(-context, context + 1):
            for dx in range(-context, context + 1):
                q = _reflect(py + dy, gh) * gw + _reflect(px + dx, gw)
                H[p, q] += 1.0
    assert torch.all(H.sum(1) == (2 * context + 1) ** 2)
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


@pytest.mark.parametrize("context", [0, 1, 2])
def test_dcp_special_case_is_average_pooling(context):
    # Paper, after Eq. 10: Δ̄ ≡ 1/r² makes Eq. 9 an average pooling; with the reflect-padded
    # border every window, corner and edge included, keeps that gain whatever τ.
    dcp = DifferentiableContextPooling(4, context=context)
    torch.nn.init.zeros_(dcp.kernel.weight)
    torch.nn.init.constant_(dcp.kernel.bias, 0.25)
    z = torch.randn(2, 4, 12, 16)
    torch.testing.assert_close(dcp(z), F.avg_pool2d(z, 2))


@pytest.mark.parametrize("context", [1, 2])
def test_dcp_corner_edge_and_interior_windows_have_the_same_gain(context):
    torch.manual_seed(8)
    dcp = DifferentiableContextPooling(3, context=context)
    z = torch.ones(1, 3, 16, 16)
    with torch.no_grad():  # a kernel that is the same in every window: gain = Σ_ν Δ̄_ν
        torch.nn.init.zeros_(dcp.kernel.weight)
        dcp.kernel.bias.fill_(0.3)
    out = dcp(z)[0, 0]
    corner, edge, interior = out[0, 0], out[0, 4], out[4, 4]
    torch.testing.assert_close(torch.stack([corner, edge]), torch.stack([interior, interior]))
    torch.testing.assert_close(interior, torch.tensor(4 * 0.3))
    # a grid smaller than the neighbourhood (2×2 windows, τ = 2) still has one gain
    small = dcp(torch.ones(1, 3, 4, 4))
    torch.testing.assert_close(small, torch.full_like(small, 4 * 0.3))


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


@pytest.mark.parametrize("options", [{}, {"head_prior": 0.1}], ids=["default", "prior0.1"])
def test_head_starts_at_the_same_logit_for_every_seed(options):
    """The head reads non-negative features; with a zero-bias he_normal 1×1 head the initial
    logit offset is a random sum of them (−4.9 and +2.7 for two seeds at half paper width)."""
    batch = make_blob_batch(4, 32, 1, seed=3)
    prior_logit = torch.logit(torch.tensor(options.get("head_prior", 0.01)))
    for seed in range(4):
        torch.manual_seed(seed)
        model = create_model("dc_net", **options, **SMALL).train()
        with torch.no_grad():
            logits = model(batch["image"]).seg
        torch.testing.assert_close(logits.mean(), prior_logit, atol=1e-4, rtol=0, msg=f"seed {seed}")
    with pytest.raises(ConfigError, match="head_prior"):
        create_model("dc_net", head_prior=1.0, **SMALL)


def test_normalised_head_is_one_1x1_convolution_in_eval_mode():
    torch.manual_seed(9)
    head = SegmentationHead(6).eval()
    with torch.no_grad():
        head.norm.running_mean.uniform_(0, 3)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-1, 1)
    bn, conv = head.norm, head.conv
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[None, :, None, None]
    bias = conv.bias + (conv.weight[0, :, 0, 0] * (bn.bias - scale * bn.running_mean)).sum()
    x = torch.rand(2, 6, 5, 5)
    torch.testing.assert_close(head(x), F.conv2d(x, weight, bias))


# --------------------------------------------------------------------------------- CCF, DaR


def test_ccf_against_equations():
    torch.manual_seed(3)
    c = 6
    ccf = CrossCorrelationFusion(c).eval()
    x_enc, x_dec = torch.randn(2, c, 8, 8), torch.randn(2, c, 4, 4)
    out = ccf(x_enc, x_dec)
    assert out.shape == (2, c, 8, 8)
    up = F.interpolate(x_dec, size=(8, 8), mode="bilinear", align_corners=False)
    M = x_enc.flatten(2) @ up.flatten(2).transpose(1, 2) / 64  # Eq. 13 (mean over pixels)
    # Eq. 14, ρ as in the authors' code: a Conv1d with c input channels, c outputs and kernel c,
    # i.e. a dense map of the whole relation matrix to c weights; rows of M enter as the input
    # channels for ω_E, columns for ω_D
    w_e, b_e = ccf.relation_encoder.weight, ccf.relation_encoder.bias
    w_d, b_d = ccf.relation_decoder.weight, ccf.relation_decoder.bias
    assert w_e.shape == w_d.shape == (c, c, c)
    omega_e = torch.einsum("opq,bpq->bo", w_e, M) + b_e
    omega_d = torch.einsum("oqp,bpq->bo", w_d, M) + b_d
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
