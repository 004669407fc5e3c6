"""linearize / unlinearize on UNets with the SD-1.5, SD-2.1 and SDXL block structures."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from tiny_models import FIXTURES, tiny_unet, unet_inputs

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.kernels import FEATURE_MAPS
from linfuse.linearize import LinFusionAttnProcessor, self_attention_layers


def meta_unet(name: str) -> UNet2DConditionModel:
    """A full-width UNet from its published config, on the meta device (no memory, no weights)."""
    config = json.loads((FIXTURES / "configs" / f"{name}_unet.json").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def mixer_parameters(dim: int, mid: int) -> int:
    """Two mixers of Linear(dim, mid) + LayerNorm(mid) + Linear(mid, dim)."""
    return 2 * ((dim * mid + mid) + 2 * mid + (mid * dim + dim))


@pytest.mark.parametrize(
    "name, layers, widths, mid_divisor",
    [("sd15", 16, [320] * 5 + [640] * 5 + [1280] * 6, 1), ("sd21", 16, [320] * 5 + [640] * 5 + [1280] * 6, 1),
     ("sdxl", 70, [640] * 10 + [1280] * 60, 16)],
)
def test_full_width_configs_report_published_layer_counts(name, layers, widths, mid_divisor):
    unet = meta_unet(name)
    report = linfuse.linearize(unet)
    assert report.layers_replaced == layers
    assert report.parameters_added == sum(mixer_parameters(w, w // mid_divisor) for w in widths)
    assert all(n.endswith("attn1") for n in report.layers)
    family = {"sd15": "SD-1.x", "sd21": "SD-2.x", "sdxl": "SDXL"}[name]
    assert report.architecture.startswith(family)


@pytest.mark.parametrize("kind, layers", [("sd15", 16), ("sd21", 16), ("sdxl", 70)])
def test_tiny_unets_convert_every_self_attention_and_no_cross_attention(kind, layers):
    unet = tiny_unet(kind)
    report = linfuse.linearize(unet)
    assert report.layers_replaced == layers
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            assert isinstance(module.processor, AttnProcessor2_0), name
        if name.endswith("attn1"):
            assert isinstance(module.processor, LinFusionAttnProcessor), name
    with torch.no_grad():
        out = unet(**unet_inputs(unet)).sample
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_processor_at_init_is_plain_elu_linear_attention():
    unet = tiny_unet("sd15")
    linfuse.linearize(unet)
    _, attn = self_attention_layers(unet)[0]
    x = torch.randn(2, 24, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = attn(x)
        q, k, v = (proj(x).double().unflatten(-1, (attn.heads, -1)).transpose(1, 2)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        phi = FEATURE_MAPS["elu1"]
        scores = phi(q) @ phi(k).mT / k.shape[-2]
        heads_out = scores @ v / (scores.sum(-1, keepdim=True) + 1e-4)
        expected = attn.to_out[0].double()(heads_out.transpose(1, 2).flatten(2))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_unlinearize_restores_outputs_bit_for_bit(kind):
    unet = tiny_unet(kind)
    inputs = unet_inputs(unet)
    originals = {name: attn.processor for name, attn in self_attention_layers(unet)}
    with torch.no_grad():
        before = unet(**inputs).sample
        linfuse.linearize(unet)
        linear = unet(**inputs).sample
        report = linfuse.unlinearize(unet)
        after = unet(**inputs).sample
    assert not torch.equal(before, linear)
    assert torch.equal(before, after)
    assert report.layers_replaced == len(originals)
    assert all(attn.processor is originals[name] for name, attn in self_attention_layers(unet))
    assert not any(".processor." in key for key in unet.state_dict())


def test_processor_parameters_are_part_of_the_unet_state_dict_and_follow_dtype():
    unet = tiny_unet("sd15")
    linfuse.linearize(unet)
    keys = [k for k in unet.state_dict() if ".attn1.processor." in k]
    assert len(keys) == 16 * 12  # per layer: 2 mixers × (Linear w,b + LayerNorm w,b + Linear w,b)
    unet.to(torch.float16)
    _, attn = self_attention_layers(unet)[0]
    assert attn.processor.to_q_[0].weight.dtype == torch.float16


def test_mid_dim_option_and_sdxl_default():
    unet = tiny_unet("sd15")
    linfuse.linearize(unet, mid_dim=3)
    assert {attn.processor.mid_dim for _, attn in self_attention_layers(unet)} == {3}
    sdxl = tiny_unet("sdxl")
    linfuse.linearize(sdxl)
    assert {(a.processor.dim, a.processor.mid_dim) for _, a in self_attention_layers(sdxl)} == {(64, 4)}


def test_bad_calls_raise_clear_errors():
    unet = tiny_unet("sd15")
    with pytest.raises(InvalidArgumentError, match="method must be one of .*linfusion.*; got 'mamba'"):
        linfuse.linearize(unet, method="mamba")
    with pytest.raises(InvalidArgumentError, match="mid_dim must be a positive integer"):
        linfuse.linearize(unet, mid_dim=0)
    with pytest.raises(InvalidArgumentError, match="expected a diffusers pipeline with a UNet2DConditionModel"):
        linfuse.linearize(torch.nn.Linear(2, 2))
    with pytest.raises(InvalidArgumentError, match="nothing to restore"):
        linfuse.unlinearize(unet)
    linfuse.linearize(unet)
    with pytest.raises(InvalidArgumentError, match="already linearized"):
        linfuse.linearize(unet)
    with pytest.raises(InvalidArgumentError, match="attention_mask is not supported"):
        _, attn = self_attention_layers(unet)[0]
        attn(torch.randn(1, 4, 32), attention_mask=torch.ones(1, 4))


def test_mid_dim_with_weights_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="mid_dim applies only without weights"):
        linfuse.linearize(tiny_unet("sd15"), weights=tmp_path, mid_dim=4)
