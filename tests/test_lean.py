"""The lean memory mode: each piece equals the module it replaces, the whole UNet equals its plain forward, the
installation leaves the model bit-identical, and traces show what it holds."""

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from tiny_models import FIXTURES, tiny_unet, unet_inputs
from torch import nn

from linfuse.errors import InvalidArgumentError
from linfuse.linearize import linearize
from linfuse.pipelines.lean import LeanSettings, disable_lean, enable_lean, lean_mode, lean_settings_of
from linfuse.pipelines.lean.conv import Upsampled, banded_conv
from linfuse.pipelines.lean.norm import group_stats, norm_act
from linfuse.pipelines.lean.parts import Parts, channel_splits, spans
from linfuse.pipelines.lean.resnet import lean_resnet
from linfuse.pipelines.lean.skips import SkipStore, pinned_pieces
from linfuse.pipelines.lean.transformer import lean_transformer
from linfuse.pipelines.memory_trace import trace

TIGHT = LeanSettings(band_elements=700, chunk_elements=900)  # many bands and chunks even at tiny sizes
METHODS = [None, "linfusion", "sana", "slab"]


def split(x: torch.Tensor, *counts: int) -> Parts:
    """x as parts of these channel counts (the rest in the last)."""
    out, start = [], 0
    for count in counts:
        out.append(x[:, start:start + count].clone())
        start += count
    return Parts(out + [x[:, start:].clone()])


def perturbed(unet, seed: int = 3):
    """Non-zero mixers and local convolutions, so that every branch of a processor counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if ".processor." in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return unet


def converted(kind: str, method: str | None):
    unet = tiny_unet(kind)
    if method:
        linearize(unet, method=method)
    return perturbed(unet)


def test_group_norm_over_parts_and_bands_equals_group_norm_with_groups_across_parts():
    x = torch.randn(1, 24, 13, 9, dtype=torch.float64) * 3 + 1
    norm = nn.GroupNorm(4, 24).double()  # 6 channels per group; the parts split 5 | 9 | 10
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    stats = group_stats(split(x, 5, 9), norm, band_elements=50)
    assert torch.allclose(norm_act(stats)(x), norm(x), atol=1e-6)
    assert torch.allclose(norm_act(stats, nn.SiLU())(x), F.silu(norm(x)), atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("height", [12, 13])
def test_banded_convolution_equals_the_convolution(stride, height):
    x = torch.randn(1, 10, height, 7)
    conv = nn.Conv2d(10, 6, 3, stride=stride, padding=1)
    norm = nn.GroupNorm(2, 10)
    out = banded_conv(split(x, 4), conv, 60, pre=norm_act(group_stats(split(x, 4), norm, 60), nn.SiLU()))
    assert torch.allclose(out.tensor(), conv(F.silu(norm(x))), atol=1e-5)
    assert len(spans(out.height, 60 // (10 * 7 * stride))) > 2  # several bands ran


def test_in_place_banded_convolution_overwrites_its_input_with_the_result():
    x = torch.randn(1, 8, 11, 6)
    conv = nn.Conv2d(8, 8, 5, padding=2)
    parts = split(x, 3)
    out = banded_conv(parts, conv, 50, in_place=True)
    assert out is parts
    assert torch.allclose(out.tensor(), conv(x), atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="in-place"):
        banded_conv(Parts.of(x), nn.Conv2d(8, 4, 3, padding=1), 50, in_place=True)


@pytest.mark.parametrize("size", [None, (23, 15)])
def test_banded_upsampling_and_skip_concatenation_equal_the_up_block(size):
    unet = tiny_unet("sd15")
    up = unet.up_blocks[1]  # an up block whose resnets take [h ‖ skip]
    h, skip = torch.randn(1, 64, 12, 8), torch.randn(1, 64, 12, 8)
    temb = torch.randn(1, unet.time_embedding.linear_2.out_features)
    resnet = up.resnets[0]
    with torch.no_grad():
        expected = resnet(torch.cat([h, skip], dim=1), temb)
        joined = split(h, 20) + split(skip, 30)
        assert torch.allclose(lean_resnet(resnet, joined, temb, 300).tensor(), expected, atol=1e-5)
        sampler = up.upsamplers[0]
        target = size or (24, 16)
        banded = banded_conv(Parts.of(expected), sampler.conv, 300, upsample=target)
        assert torch.allclose(banded.tensor(), sampler(expected, size), atol=1e-5)


def test_a_fused_up_sampler_read_by_the_next_resnet_equals_the_up_sampled_concatenation():
    unet = tiny_unet("sd15")
    sampler, resnet = unet.up_blocks[1].upsamplers[0], unet.up_blocks[2].resnets[0]
    small, skip = torch.randn(1, 64, 6, 5), torch.randn(1, 32, 12, 10)
    temb = torch.randn(1, unet.time_embedding.linear_2.out_features)
    with torch.no_grad():
        up = sampler(small)
        expected = resnet(torch.cat([up, skip], dim=1), temb)
        fused = Upsampled(split(small, 20), sampler.conv, (12, 10))
        assert torch.allclose(fused.tensor(), up, atol=1e-5)
        out = lean_resnet(resnet, fused + split(skip, 10), temb, 300)
    assert torch.allclose(out.tensor(), expected, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_chunked_transformer_blocks_equal_the_transformer(kind, method):
    unet = converted(kind, method)
    block = unet.down_blocks[1].attentions[0]
    width = block.proj_in.in_features if block.use_linear_projection else block.proj_in.in_channels
    x = torch.randn(1, width, 10, 6)
    context = torch.randn(1, 5, unet.config.cross_attention_dim)
    _grid_for(unet, 10 * 2, 6 * 2)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=context, return_dict=False)[0]
        out = lean_transformer(block, split(x, width // 3), context, TIGHT).tensor()
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()


def _grid_for(unet, height: int, width: int) -> None:
    """Run the UNet once at this latent size so that processors with a local term know their token grid."""
    with torch.no_grad():
        unet(**unet_inputs(unet, batch=1, height=height, width=width))


def assert_lean_equals_plain(unet, settings: LeanSettings) -> None:
    """The UNet with ``settings`` installed equals its plain forward within 1e-5 on a batch of two."""
    inputs = unet_inputs(unet, batch=2, height=20, width=36)  # 20 = 8·2 + 4: up-sampling to the skips' size
    with torch.no_grad():
        expected = unet(**inputs).sample
        with lean_mode(unet, settings):
            out = unet(**inputs).sample
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
def test_lean_unet_equals_the_plain_unet_with_sequential_guidance(kind, method):
    assert_lean_equals_plain(converted(kind, method), TIGHT)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_lean_unet_with_fused_up_sampling_equals_the_plain_unet(kind):
    assert_lean_equals_plain(converted(kind, "slab"),
                             LeanSettings(band_elements=700, chunk_elements=900, fuse_upsampling=True))


def test_controlnet_residuals_and_a_fallback_block_give_the_plain_result():
    unet = converted("sd15", "linfusion")
    inputs = unet_inputs(unet, batch=2, height=16, width=16)
    with torch.no_grad():
        shapes = [t.shape for t in _skips(unet, inputs)]
        generator = torch.Generator().manual_seed(5)
        inputs["down_block_additional_residuals"] = [torch.randn(s, generator=generator) for s in shapes]
        inputs["mid_block_additional_residual"] = torch.randn(2, 64, 2, 2, generator=generator)
        expected = unet(**inputs).sample
        resnet = unet.up_blocks[0].resnets[1]
        resnet.conv1 = WrappedConv(resnet.conv1)  # not a plain Conv2d: this resnet has no lean path, runs whole
        with lean_mode(unet, TIGHT):
            out = unet(**inputs).sample
    assert torch.allclose(out, expected, atol=1e-5)


class WrappedConv(nn.Conv2d):
    """A Conv2d with its own forward (as LoRA wrappers have): the same result, but not one the lean mode bands."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.load_state_dict(conv.state_dict())

    def forward(self, x):
        return super().forward(x)


def _skips(unet, inputs) -> list[torch.Tensor]:
    """The down path's skip activations of a plain forward (their shapes are the ControlNet residuals')."""
    found = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: found.append(o))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: found.extend(o[1])))
    unet(**inputs)
    for hook in hooks:
        hook.remove()
    return found


def test_installing_and_removing_lean_mode_leaves_the_unet_bit_identical():
    unet = converted("sdxl", "linfusion")
    inputs = unet_inputs(unet, batch=2, height=16, width=16)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    settings = LeanSettings(band_elements=4000, chunk_elements=4000)
    with torch.no_grad():
        plain = unet(**inputs).sample
        enable_lean(unet, settings)
        assert lean_settings_of(unet) == settings
        lean = unet(**inputs).sample
        disable_lean(unet)
        again = unet(**inputs).sample
    assert "forward" not in unet.__dict__ and lean_settings_of(unet) is None
    assert torch.equal(again, plain) and not torch.equal(lean, plain)  # lean differs in rounding only
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_lean_mode_leaves_training_to_the_plain_forward():
    unet = converted("sd15", "linfusion")
    inputs = unet_inputs(unet, batch=2, height=8, width=8)
    with lean_mode(unet, TIGHT):
        out = unet(**inputs).sample
    out.mean().backward()
    assert unet.conv_in.weight.grad is not None


def test_settings_refuse_bad_budgets_and_non_unets():
    with pytest.raises(InvalidArgumentError, match="band_elements"):
        LeanSettings(band_elements=0)
    with pytest.raises(InvalidArgumentError, match="UNet2DConditionModel"):
        enable_lean(nn.Linear(2, 2))


def test_parts_stay_under_the_element_limit_and_pinned_pieces_cover_the_bytes():
    assert channel_splits(960, 2048 * 2048) == [120] * 8  # 960 · 2048² = 7.5 · 2^29
    assert max(channel_splits(960, 2048 * 2048)) * 2048 * 2048 <= 2**29
    for nbytes in (1, 5 << 20, 1_342_177_280, 3 << 30):
        pieces = pinned_pieces(nbytes)
        assert sum(pieces) - nbytes < 1 << 20 and all(p & (p - 1) == 0 for p in pieces)


def test_parked_skips_count_as_host_memory_in_a_trace():
    x = torch.empty(1, 8, 64, 64, device="meta")

    def park_and_return():
        store = SkipStore(park=True, device=torch.device("meta"))
        store.push(Parts.of(torch.empty_like(x)))
        return store

    traced = trace(park_and_return)
    nbytes = x.nelement() * 4
    assert traced.host_peak == sum(pinned_pieces(nbytes)) == 1 << 20  # one 1 MiB pinned piece
    assert traced.peak == nbytes  # the device copy, until it was parked


def _meta_sd15_16k_trace(lean: LeanSettings | None):
    config = json.loads((FIXTURES / "configs" / "sd15_unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).eval().to(torch.float16)
        linearize(unet, method="linfusion")
    meta = {"device": "meta", "dtype": torch.float16}
    sample, context = torch.empty(2, 4, 2048, 2048, **meta), torch.empty(2, 77, 768, **meta)
    with lean_mode(unet, lean):
        return trace(lambda s, c: unet(s, torch.tensor(500), c).sample, sample, context,
                     existing=[*unet.parameters(), *unet.buffers()])


def test_at_16k_plain_holds_tensors_past_2_31_elements_and_lean_holds_none():
    plain = _meta_sd15_16k_trace(None)
    lean = _meta_sd15_16k_trace(LeanSettings(park_skips=True))
    fused = _meta_sd15_16k_trace(LeanSettings(park_skips=True, fuse_upsampling=True))
    assert plain.max_elements >= 2**31
    assert lean.max_elements < 2**31 and fused.max_elements < 2**31
    assert lean.peak < 0.1 * plain.peak and lean.host_peak > 12 * 2**30  # the skips wait in host memory
    assert fused.peak < lean.peak - 2 * 2**30  # the 640-channel up-sampled activation (5 GiB) is never held


def test_lean_unet_on_the_triton_kernels_equals_the_plain_unet(monkeypatch):
    """The lean bands' chunked attention goes through the state/readout ops (Triton's interpreter here, the same
    kernels a GPU runs) and still equals the plain forward on the PyTorch reference."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    unet = converted("sd15", "linfusion")
    inputs = unet_inputs(unet, batch=2, height=12, width=20)
    with torch.no_grad():
        monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "reference")
        expected = unet(**inputs).sample
        monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "triton")
        with lean_mode(unet, TIGHT), OpCounter() as counter:
            out = unet(**inputs).sample
    assert any(name.startswith("linfuse.linear_attention_state") for name in counter.names)
    assert any(name.startswith("linfuse.linear_attention_readout") for name in counter.names)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()
