"""The lean rungs scale with the model: what they hold at their peak is a fixed number of finest activations for
any channel width, head count and text width, and a transformer chunk's widest tensor (cross-attention scores
included) stays within the chunk budget."""

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from largest_output import LargestOutput
from test_lean import split
from tiny_models import tiny_unet

from linfuse.linearize import linearize
from linfuse.linearize.twin import _quiet_diffusers
from linfuse.pipelines.lean import LeanSettings, lean_mode
from linfuse.pipelines.lean.transformer import lean_transformer, token_rows
from linfuse.pipelines.memory_trace import trace


def meta_unet(width: int, heads: int, text_width: int) -> UNet2DConditionModel:
    """A two-level SD-like UNet on the meta device, linearized (LinFusion)."""
    config = dict(sample_size=64, block_out_channels=(width, 2 * width), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_width,
                  attention_head_dim=heads)
    with torch.device("meta"), _quiet_diffusers():
        unet = UNet2DConditionModel(**config).eval()
        linearize(unet, method="linfusion")
    return unet.requires_grad_(False)


def peak_in_finest_activations(unet, latent: int, settings: LeanSettings) -> float:
    meta = {"device": "meta", "dtype": torch.float32}
    sample = torch.empty(1, 4, latent, latent, **meta)
    context = torch.empty(1, 77, unet.config.cross_attention_dim, **meta)
    with lean_mode(unet, settings):
        traced = trace(lambda s, c: unet(s, torch.tensor(500), c).sample, sample, context,
                       existing=[*unet.parameters(), *unet.buffers()])
    finest = unet.config.block_out_channels[0] * latent * latent * 4
    return traced.peak / finest


def test_the_lean_peak_is_a_fixed_number_of_finest_activations_for_any_width():
    """Measured: 5.63 finest activations (lean) and 4.25 (up-sampling fused) at widths 32, 64 and 160 alike, with 2,
    8 and 16 heads over text widths 32, 768 and 2048, at latents 512² to 2048²."""
    ratios = {}
    for width, heads, text_width in ((32, 2, 32), (160, 16, 2048)):
        unet = meta_unet(width, heads, text_width)
        for name, settings in (("lean", LeanSettings()), ("fused", LeanSettings(fuse_upsampling=True))):
            ratios[width, name] = [peak_in_finest_activations(unet, latent, settings) for latent in (512, 1024)]
    for (width, name), (smaller, larger) in ratios.items():
        assert abs(larger - smaller) < 0.05 * larger, (width, name, smaller, larger)  # grows as the activations do
    for name, bounds in (("lean", (5.0, 6.0)), ("fused", (4.0, 4.5))):
        assert all(bounds[0] < ratios[width, name][1] < bounds[1] for width in (32, 160)), ratios


def largest_scores() -> LargestOutput:
    """The most elements of any batched matrix product's output (attention scores when they are not fused)."""
    return LargestOutput(lambda func, tensor: func in (torch.ops.aten.baddbmm.default, torch.ops.aten.bmm.default))


def test_a_chunk_holds_its_cross_attention_scores_within_the_chunk_budget():
    """Four heads over 77 text tokens are wider per token (308) than any linear layer of this block (the GEGLU's
    256): the chunk is sized by the scores, so an unfused attention's score matrix stays within the budget."""
    unet = tiny_unet("sd15")
    block = unet.down_blocks[0].attentions[0]
    attn2 = block.transformer_blocks[0].attn2
    attn2.heads = 4
    attn2.set_processor(AttnProcessor())
    channels = block.proj_in.in_channels
    budget = 8 * 16 * 308
    rows = token_rows(block, 16, budget, context_tokens=77)
    assert rows * 16 * 4 * 77 <= budget < (rows + 1) * 16 * 4 * 77
    x, context = torch.randn(1, channels, 40, 16), torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=context, return_dict=False)[0]
        with largest_scores() as scores:
            out = lean_transformer(block, split(x, channels // 2), context,
                                   LeanSettings(band_elements=budget, chunk_elements=budget)).tensor()
    assert torch.allclose(out, expected, atol=1e-5)
    assert 0 < scores.largest <= budget
