"""Baseline models: forward contract, gradients, paper structure, weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from busseg.errors import ConfigError
from busseg.losses import create_objective
from busseg.models import create_model
from busseg.models.baselines._common import bilinear_upsampling_kernel, grayscale_first_conv
from busseg.models.baselines.fcn import FCN8sDecoder
from busseg.models.output import ModelOutput
from conftest import make_blob_batch, train_steps

#: Small configurations (the encoders stay full size: they are what the baselines are).
SMALL_OPTIONS = {
    "unet": {"base_channels": 4},
    "unet_resnet18": {},
    "unetplusplus": {},
    "fpn": {},
    "deeplabv3plus": {},
    "fcn": {"fc_channels": 32},
    "fcn_resnet18": {},
    "segnet": {},
}
BASELINES = sorted(SMALL_OPTIONS)


@pytest.fixture(scope="module")
def build():
    """Each (model, in_channels) is built once for the whole module."""
    cache: dict[tuple[str, int], nn.Module] = {}

    def get(name: str, in_channels: int = 1) -> nn.Module:
        key = (name, in_channels)
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = create_model(
                name, in_channels=in_channels, encoder_weights="none", **SMALL_OPTIONS[name]
            )
        return cache[key]

    return get


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", BASELINES)
def test_forward_contract_for_two_sizes(build, name, in_channels):
    model = build(name, in_channels).eval()
    sizes = (64, 96) if in_channels == 1 else (64,)  # two sizes once is enough per model
    for size in sizes:
        with torch.no_grad():
            out = model(torch.randn(2, in_channels, size, size))
        assert isinstance(out, ModelOutput)
        assert out.seg.shape == (2, 1, size, size)
        assert out.aux == {} and out.cls is None
        assert torch.isfinite(out.seg).all()


@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_every_parameter(build, name):
    model = build(name, 1).train()
    model.zero_grad(set_to_none=True)
    batch = make_blob_batch(n=2, size=64, seed=1)
    out = model(batch["image"])
    F.binary_cross_entropy_with_logits(out.seg, batch["mask"]).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"{name}: no gradient for {dead[:5]}"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["unet"])
def test_few_steps_on_phantoms_lower_the_objective(name):
    torch.manual_seed(0)
    model = create_model(name, encoder_weights="none", **SMALL_OPTIONS[name]).train()
    objective = create_objective("segmentation", pixel="bce_dice")
    batch = make_blob_batch(n=4, size=64, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [step["total"] for step in train_steps(model, objective, batch, optimizer, steps=10)]
    assert losses[-1] < losses[0] * 0.9, losses


@pytest.mark.parametrize("name,size", [("unet", 72), ("segnet", 80), ("deeplabv3plus", 72), ("fpn", 48)])
def test_indivisible_input_is_a_config_error(build, name, size):
    with pytest.raises(ConfigError, match=f"{size}x{size} is not divisible"):
        build(name, 1)(torch.zeros(1, 1, size, size))


# --- U-Net ---------------------------------------------------------------------------------

def test_unet_has_the_papers_23_convolutions_and_widths():
    model = create_model("unet", encoder_weights="none")
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23  # "In total the network has 23 convolutional layers"
    assert model.encoder.out_channels == [64, 128, 256, 512, 1024]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in ups] == [
        (1024, 512, (2, 2), (2, 2)), (512, 256, (2, 2), (2, 2)),
        (256, 128, (2, 2), (2, 2)), (128, 64, (2, 2), (2, 2)),
    ]


def test_unet_norm_none_is_the_original_conv_relu_network():
    model = create_model("unet", base_channels=4, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_unet_rejects_pretrained_weights_and_bad_options():
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        create_model("unet", encoder_weights="imagenet")
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("unet", in_channels=2)
    with pytest.raises(ConfigError, match="base_channels"):
        create_model("unet", base_channels=5)


# --- FCN-8s --------------------------------------------------------------------------------

def test_bilinear_kernel_doubles_a_ramp_exactly():
    up = nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_upsampling_kernel(1, 4))
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    out = up(ramp)
    assert out.shape[-2:] == (16, 16)
    # bilinear interpolation of a linear ramp is linear away from the zero-padded border
    inner = out[0, 0, 4:-4, 2:-2]
    steps = inner[:, 1:] - inner[:, :-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.5))


def test_fcn8s_starts_as_fcn32s_and_fuses_the_skips_by_addition():
    torch.manual_seed(0)
    decoder = FCN8sDecoder(channels_s8=6, channels_s16=5, channels_s32=4)
    s8, s16, s32 = torch.randn(1, 6, 8, 8), torch.randn(1, 5, 4, 4), torch.randn(1, 4, 2, 2)
    base = decoder([s8, s16, s32], (64, 64))
    # skip scores start at zero (Long et al.): the pool3/pool4 features do not matter yet
    assert torch.equal(base, decoder([torch.randn_like(s8), torch.randn_like(s16), s32], (64, 64)))
    with torch.no_grad():
        decoder.score_s16.bias.fill_(1.0)
    shifted = decoder([s8, s16, s32], (64, 64))
    # a constant +1 added at stride 16 goes through one bilinear x2 and the final x8
    assert torch.allclose((shifted - base)[..., 16:-16, 16:-16], torch.ones(1, 1, 32, 32), atol=1e-5)


# --- SegNet --------------------------------------------------------------------------------

def test_segnet_decoder_mirrors_the_vgg16_bn_encoder(build):
    model = build("segnet", 1)
    enc = [[c.out_channels for c in s.modules() if isinstance(c, nn.Conv2d)] for s in model.encoder.stages]
    dec = [[c.out_channels for c in s.modules() if isinstance(c, nn.Conv2d)] for s in model.decoder.stages]
    assert enc == [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    assert dec == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 1]]
    assert isinstance(model.decoder.stages[-1].convs[-1], nn.Conv2d)  # classifier: no BN/ReLU


def test_segnet_unpools_to_the_stored_max_locations(build):
    model = build("segnet", 1).eval()
    captured = {}
    hook = model.decoder.stages[0].convs.register_forward_hook(
        lambda mod, inputs, out: captured.setdefault("unpooled", inputs[0])
    )
    images = torch.randn(1, 1, 64, 64)
    try:
        with torch.no_grad():
            model(images)
            bottleneck, indices, sizes = model.encoder(images)
    finally:
        hook.remove()
    unpooled = captured["unpooled"]
    allowed = torch.zeros_like(unpooled, dtype=torch.bool).flatten(2)
    allowed.scatter_(2, indices[-1].flatten(2), True)
    nonzero = (unpooled != 0).flatten(2)
    assert not (nonzero & ~allowed).any()  # values only where the maxima were
    assert nonzero.any()


# --- grayscale adaptation and weight files ---------------------------------------------------

def test_summed_first_conv_equals_repeating_the_gray_channel():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, padding=1)
    gray = grayscale_first_conv(rgb)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_encoder_weights_file_is_loaded_and_adapted_to_grayscale(tmp_path):
    torch.manual_seed(3)
    donor = create_model("fpn", in_channels=3, encoder_weights="none")
    state = dict(donor.encoder.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head is tolerated
    path = tmp_path / "resnet18_encoder.pth"
    torch.save(state, path)
    model = create_model("fpn", in_channels=1, encoder_weights=str(path))
    loaded = model.encoder.state_dict()
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    info = model.encoder.busseg_weights_info
    assert info["requested"] == str(path) and info["used"] == "file" and "sha256:" in info["detail"]


def test_wrong_encoder_weights_file_is_a_config_error(tmp_path):
    wrong = create_model("unet", base_channels=4).state_dict()
    path = tmp_path / "not_a_resnet.pth"
    torch.save(wrong, path)
    with pytest.raises(ConfigError, match="not_a_resnet.pth.*does not fit"):
        create_model("unetplusplus", encoder_weights=str(path))
    truncated = create_model("fpn", encoder_weights="none").encoder.state_dict()
    truncated.pop("layer3.0.bn1.running_mean")
    torch.save(truncated, path)
    with pytest.raises(ConfigError, match="missing keys.*layer3.0.bn1.running_mean"):
        create_model("deeplabv3plus", encoder_weights=str(path))
    with pytest.raises(ConfigError, match="expected 'imagenet', 'none' or an existing"):
        create_model("fpn", encoder_weights=str(tmp_path / "absent.pth"))


def test_offline_imagenet_falls_back_to_random_with_a_record(caplog):
    model = create_model("fpn", encoder_weights="imagenet")  # tests run with BUSSEG_OFFLINE=1
    assert model.encoder.busseg_weights_info["used"] == "random"
    assert model.encoder.busseg_weights_info["requested"] == "imagenet"


def test_smp_options_are_checked_not_silently_dropped():
    with pytest.raises(ConfigError, match="decoder_chanels"):
        create_model("fpn", decoder_chanels=64)
    with pytest.raises(ConfigError, match="resnet999"):
        create_model("unet_resnet18", encoder="resnet999", encoder_weights="none")
    narrow = create_model("unet_resnet18", decoder_channels=(32, 16, 8, 8, 4))
    assert narrow(torch.zeros(1, 1, 64, 64)).seg.shape == (1, 1, 64, 64)
