"""ElaD-Net (Xu et al., IJCAI 2025): model, its parts, its objective and its recipe."""

from __future__ import annotations

import pytest
import torch

from busseg.errors import ConfigError
from busseg.losses import create_objective
from busseg.losses.elad_net import edge_body_targets
from busseg.models import create_model, model_info
from busseg.models.elad_net import (
    VARIANTS,
    GaussianBlur,
    LaplacianPyramid,
    SelfCalibratingDecoupling,
    SpatialSemanticReconstruction,
)
from busseg.models.output import ModelOutput
from tests.conftest import make_blob_batch, train_steps


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("elad_net", in_channels=1, encoder_weights="none")


def test_registered_with_paper_and_divisor():
    info = model_info("elad_net")
    assert info.paper == "Xu et al., ElaD-Net, IJCAI 2025"
    assert info.size_divisor == 32


def test_encoder_stages_follow_table_1(model):
    features = model.encoder(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == [16, 24, 48, 88, 1408]
    assert [64 // f.shape[-1] for f in features] == [2, 4, 8, 16, 32]
    assert model.encoder.out_channels == (16, 24, 48, 88, 1408)
    assert not hasattr(model.encoder.net.classifier, "weight")  # ImageNet classifier removed


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (128, 64)])
def test_output_shapes(model, size):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert isinstance(out, ModelOutput)
    assert out.seg.shape == (2, 1, *size)
    assert set(out.aux) == {"edge", "body"}
    assert all(a.shape == (2, 1, *size) for a in out.aux.values())
    assert out.cls is None
    attention = out.extras["foreground_attention_4"]
    assert attention.shape == (2, 1, size[0] // 2, size[1] // 2)
    assert 0 <= attention.min() and attention.max() <= 1


def test_smallest_input_and_rejected_sizes(model):
    model.eval()
    with torch.no_grad():  # 2×2 maps at the first decoder stage: the 1/4 ESD scale is 1×1
        assert model(torch.randn(1, 1, 32, 32)).seg.shape == (1, 1, 32, 32)
    with pytest.raises(ConfigError, match="multiple of 32"):
        model(torch.randn(1, 1, 80, 64))


@pytest.mark.parametrize(
    "variant, aux_keys",
    [
        ("unet_decoder", set()),
        ("no_esd", {"edge", "body"}),
        ("no_ssr", set()),
        ("no_edge", {"body"}),
        ("no_body", {"edge"}),
    ],
)
def test_ablation_variants_build_and_run(variant, aux_keys):
    torch.manual_seed(0)
    net = create_model("elad_net", variant=variant).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 64))
    assert out.seg.shape == (1, 1, 64, 64)
    assert set(out.aux) == aux_keys
    assert torch.isfinite(out.seg).all()
    loss, parts = create_objective("elad_net")(out, make_blob_batch(1, 64))
    assert set(parts) == {"output"} | aux_keys and torch.isfinite(loss)


#: What each ablation must change (Tables 4-5): ESD blocks in the decoder stages, and the SSR
#: branches whose reconstruction reaches the fused output of Eq. 22.
VARIANT_PARTS = {
    "full": (True, ("edge", "body")),
    "unet_decoder": (False, ()),
    "no_esd": (False, ("edge", "body")),
    "no_ssr": (True, ()),
    "no_edge": (True, ("body",)),
    "no_body": (True, ("edge",)),
}
SMALL_DECODER = {"decoder_channels": [16, 8, 8, 8]}


def variant_problems(variant: str, net) -> list[str]:
    """What ``net`` does differently from what ablation ``variant`` says (empty: nothing)."""
    from busseg.models.elad_net import ElasticSemanticDecoupling

    esd, branches = VARIANT_PARTS[variant]
    problems = []
    blocks = list(net.decoder.blocks)
    if [isinstance(b, ElasticSemanticDecoupling) for b in blocks] != [esd] * len(blocks):
        problems.append(f"ESD blocks: expected {esd}")
    built = sorted({name for ssr in net.decoder.ssr for name in ssr.up})
    if built != sorted(branches) or len(net.decoder.ssr) != (4 if branches else 0):
        problems.append(f"SSR branches {built}, expected {sorted(branches)}")
    torch.manual_seed(0)
    images = torch.randn(1, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        reference = net(images)
        if set(reference.aux) != set(branches):
            problems.append(f"aux outputs {sorted(reference.aux)}, expected {sorted(branches)}")
        for name in built:  # a branch that exists must reach the fused output (Eq. 22)
            up = net.decoder.ssr[-1].up[name]
            saved = up.weight.clone()
            up.weight.add_(1.0)
            changed = not torch.allclose(net(images).seg, reference.seg)
            up.weight.copy_(saved)
            if not changed:
                problems.append(f"SSR {name} branch does not reach the output")
    return problems


@pytest.mark.parametrize("variant", list(VARIANT_PARTS))
def test_every_variant_builds_exactly_its_ablation(variant):
    torch.manual_seed(0)
    net = create_model("elad_net", variant=variant, **SMALL_DECODER)
    assert variant_problems(variant, net) == []


def test_variant_check_fails_when_a_flag_does_nothing():
    torch.manual_seed(0)
    full = create_model("elad_net", variant="full", **SMALL_DECODER)
    for variant in ("no_esd", "no_ssr", "no_edge", "no_body", "unet_decoder"):
        assert variant_problems(variant, full), variant  # a "variant" that is still the full net
    # an edge branch that is built and trained but never added to the output is caught too
    no_body = create_model("elad_net", variant="no_body", **SMALL_DECODER)
    assert variant_problems("no_body", no_body) == []
    original = no_body.decoder.forward

    def forward_dropping_the_edge(features):
        fused, carried, attentions = original(features)
        return fused - carried["edge"], carried, attentions

    no_body.decoder.forward = forward_dropping_the_edge
    assert any("does not reach" in p for p in variant_problems("no_body", no_body))


def test_variant_sizes_differ_as_documented():
    from busseg.models import count_parameters
    from busseg.models.elad_net import MEASURED_SIZE

    counts = {v: count_parameters(create_model("elad_net", variant=v, **SMALL_DECODER)) for v in VARIANTS}
    assert len({counts[v] for v in VARIANTS if v != "no_body"}) == len(VARIANTS) - 1
    assert counts["no_edge"] == counts["no_body"]  # the two branches are the same size
    # the documented sizes order the variants the same way
    by_size = sorted(VARIANTS, key=lambda v: (counts[v], v))
    assert by_size == sorted(VARIANTS, key=lambda v: (MEASURED_SIZE[v]["params_M"], v))


def test_all_variants_are_tested():
    assert set(VARIANTS) == {"full", "unet_decoder", "no_esd", "no_ssr", "no_edge", "no_body"}
    with pytest.raises(ConfigError, match="unknown variant"):
        create_model("elad_net", variant="no_such")


def test_three_channel_input():
    torch.manual_seed(0)
    net = create_model("elad_net", in_channels=3, variant="no_ssr", decoder_channels=[32, 16, 16, 8])
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 64, 64)).seg.shape == (1, 1, 64, 64)


# ---------------------------------------------------------------- ESD and SSR parts (Eqs. 3-21)
def test_laplacian_pyramid_levels_sum_back_to_input():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 12)
    pyramid = LaplacianPyramid((1.0, 2.0, 4.0))
    levels = pyramid(x)
    assert len(levels) == 4  # L + 1 levels for L = 3 sigmas (Eq. 5)
    torch.testing.assert_close(sum(levels), x, atol=1e-5, rtol=0)
    # finer levels carry more high-frequency energy than the low-pass residual G_L
    roughness = [(lv[..., 1:] - lv[..., :-1]).abs().mean() for lv in levels]
    assert roughness[0] > roughness[-1]
    with pytest.raises(ConfigError):
        LaplacianPyramid((2.0, 1.0))


def test_gaussian_blur_keeps_constants_and_smooths():
    blur = GaussianBlur(2.0)
    constant = torch.full((1, 2, 5, 5), 3.0)  # map smaller than the kernel (radius 6)
    torch.testing.assert_close(blur(constant), constant)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[..., 10, 10] = 1
    out = blur(impulse)
    assert abs(out.sum().item() - 1) < 1e-5 and out.max() < 0.1


def test_self_calibration_gives_channel_weights():
    torch.manual_seed(0)
    sced = SelfCalibratingDecoupling(8, reduction=2)
    x = torch.randn(2, 8, 8, 8)
    y, weights = sced(x)
    assert weights.shape == (2, 8, 1, 1) and (weights > 0).all() and (weights < 1).all()
    torch.testing.assert_close(y, x * weights)


def test_ssr_decomposition_and_carry():
    torch.manual_seed(0)
    ssr = SpatialSemanticReconstruction(4, 6)
    x = torch.randn(1, 4, 8, 8)
    parts = ssr.decompose(x)
    torch.testing.assert_close(parts["body"] + parts["edge"], x)  # Eq. 17
    flat = ssr.decompose(torch.full((1, 4, 8, 8), 2.0))
    assert flat["edge"].abs().max() < 1e-6  # no spurious edge at the border
    out = ssr(x)
    assert {k: v.shape for k, v in out.items()} == {"edge": (1, 6, 16, 16), "body": (1, 6, 16, 16)}
    carried = {k: torch.ones(1, 4, 8, 8) for k in ("edge", "body")}
    assert not torch.allclose(ssr(x, carried)["edge"], out["edge"])  # Eqs. 19 and 21


# ---------------------------------------------------------------- objective (Eqs. 23-25)
def test_edge_and_body_targets():
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 5:15, 5:15] = 1
    edge, body = edge_body_targets(mask, edge_width=5)
    assert body.sum() == 6 * 6 and body[..., 7:13, 7:13].all()  # eroded by 2 px
    assert edge.sum() == 14 * 14 - 6 * 6  # band of 2 px each side of the contour
    assert ((edge + body) <= 1).all() and (edge * body == 0).all()
    # a lesion cut by the image border keeps its body at the border, no edge along it
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., :, :10] = 1
    edge, body = edge_body_targets(mask, 5)
    assert body[..., 0, :8].all() and edge[..., :, :8].sum() == 0


def test_objective_weights_and_parts():
    batch = make_blob_batch(2, 32)
    torch.manual_seed(0)
    out = ModelOutput(
        seg=torch.randn(2, 1, 32, 32),
        aux={"edge": torch.randn(2, 1, 32, 32), "body": torch.randn(2, 1, 32, 32)},
    )
    loss, parts = create_objective("elad_net")(out, batch)
    expected = 0.4 * parts["output"] + 0.3 * parts["edge"] + 0.3 * parts["body"]
    torch.testing.assert_close(loss, expected)
    only_edge, _ = create_objective(
        "elad_net", output_weight=0, edge_weight=1, body_weight=0
    )(out, batch)
    torch.testing.assert_close(only_edge, parts["edge"])
    # a perfect edge prediction scores a much lower edge term than a random one
    edge_target, body_target = edge_body_targets(batch["mask"])
    perfect = ModelOutput(seg=out.seg, aux={"edge": (edge_target * 2 - 1) * 20, "body": out.aux["body"]})
    assert create_objective("elad_net")(perfect, batch)[1]["edge"] < 0.05 < parts["edge"]
    for bad in ({"edge_weight": -1}, {"edge_width": 4}):
        with pytest.raises(ConfigError):
            create_objective("elad_net", **bad)


def test_objective_handles_lower_resolution_aux():
    batch = make_blob_batch(2, 32)
    out = ModelOutput(seg=torch.zeros(2, 1, 32, 32), aux={"edge": torch.zeros(2, 1, 16, 16)})
    loss, parts = create_objective("elad_net")(out, batch)
    assert set(parts) == {"output", "edge"} and torch.isfinite(loss)


# ---------------------------------------------------------------- training behaviour
def test_gradients_reach_every_parameter(model):
    model.train()
    model.zero_grad()
    batch = make_blob_batch(2, 64, seed=1)
    loss, _ = create_objective("elad_net")(model(batch["image"]), batch)
    loss.backward()
    grads = dict(model.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in grads.values())
    # Every parameter is in the graph. A squeeze-excitation bottleneck (4 hidden ReLUs) may be
    # all-dead for one random init and batch, giving its fc1 / fc2.weight an exact zero
    # gradient; its fc2.bias still receives one, which is what is required of those modules.
    zero = [
        n
        for n, p in grads.items()
        if not p.grad.abs().sum() > 0 and not (".fc1." in n or n.endswith("fc2.weight"))
    ]
    assert not zero, zero[:10]


def test_few_steps_lower_the_loss(model):
    torch.manual_seed(0)
    net = model.train()  # the other tests only check shapes: training this instance is harmless
    objective = create_objective("elad_net")
    optimizer = torch.optim.Adamax(net.parameters(), lr=0.002)
    batch = make_blob_batch(2, 64, seed=2)
    losses = [step["total"] for step in train_steps(net, objective, batch, optimizer, steps=10)]
    assert losses[-1] < 0.85 * losses[0], losses


def test_recipe_builds_model_and_objective():
    from busseg.engine.recipe import load_recipe

    recipe = load_recipe("elad_net")
    assert recipe["optimizer"]["name"] == "adamax" and recipe["optimizer"]["lr"] == 0.002
    assert (recipe["epochs"], recipe["batch_size"], recipe["cv_folds"]) == (300, 6, 4)
    create_objective(**recipe["loss"])
    net = create_model(recipe["model"], in_channels=recipe["in_channels"], **recipe["model_options"])
    assert net.variant == "full"
