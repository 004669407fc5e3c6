"""What users bring along: ControlNet on a linearized UNet, and cross-attention processors of their own.

LinFusion converts only the UNet's self-attention, so a ControlNet (its own softmax copy of the encoder) keeps
feeding residuals into the linearized UNet, and processors a user installed on ``attn2`` (IP-Adapter style) are not
the library's to touch. Tiny SD-1.5- and SDXL-structured pipelines with a VAE factor of 8.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from tiny_models import tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_unet, unet_inputs

import linfuse
from linfuse.linearize import linearized_layers

KINDS = {"sd15": (tiny_sd_pipeline, StableDiffusionControlNetPipeline, StableDiffusionPipeline),
         "sdxl": (tiny_sdxl_pipeline, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline)}


def controlnet_for(unet) -> ControlNetModel:
    """A ControlNet from the UNet's encoder whose zero-initialised convolutions (the control image's embedding
    output and the residual outputs) are made non-zero, so that the control image changes the result, as a trained
    ControlNet's does."""
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]:
            block.weight.normal_(0.0, 1.0, generator=generator)
    return controlnet.eval()


def control_image(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def run(pipe, **extra):
    call = dict(prompt="a cat", num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    return pipe(**call, **extra).images[0].numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_controlnet_residuals_act_through_the_linearized_unet(kind):
    make_base, controlnet_class, plain_class = KINDS[kind]
    base = make_base()
    pipe = controlnet_class.from_pipe(base, controlnet=controlnet_for(base.unet))
    report = linfuse.linearize(pipe)
    assert report.layers_replaced == len(linearized_layers(pipe.unet)) > 0
    assert not linearized_layers(pipe.controlnet)  # the ControlNet keeps its own (softmax) attention
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        first = run(pipe, image=control_image(1))
        second = run(pipe, image=control_image(2))
        unconditioned = run(pipe, image=control_image(1), controlnet_conditioning_scale=0.0)
        plain = plain_class.from_pipe(pipe)
        plain.set_progress_bar_config(disable=True)
        without = run(plain)
    assert first.shape == (4, 8, 8) and np.isfinite(first).all()
    # the ControlNet's residuals steer the linearized UNet's latents, and the control image steers them
    assert np.abs(first - unconditioned).mean() > 0.05 * np.abs(without).mean()
    assert np.abs(first - second).mean() > 1e-4 * np.abs(without).mean()
    np.testing.assert_allclose(unconditioned, without, atol=1e-5)  # scale 0: exactly the linearized pipeline


class CountingCrossAttention(AttnProcessor2_0):
    """A user's cross-attention processor (IP-Adapter style): counts its calls, computes as SDPA."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        self.calls += 1
        return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_cross_attention_processors_a_user_installed_survive_linearize_and_unlinearize(kind):
    unet = tiny_unet(kind)
    mine = {name: CountingCrossAttention() for name in unet.attn_processors if ".attn2." in name}
    unet.set_attn_processor({name: mine.get(name, proc) for name, proc in unet.attn_processors.items()})
    inputs = unet_inputs(unet, batch=1)
    with torch.no_grad():
        before = unet(**inputs).sample
    linfuse.linearize(unet)
    assert all(unet.attn_processors[name] is proc for name, proc in mine.items())
    calls = sum(p.calls for p in mine.values())
    with torch.no_grad():
        unet(**inputs)
    assert sum(p.calls for p in mine.values()) == calls + len(mine)  # each ran once more, inside the linear UNet
    linfuse.unlinearize(unet)
    assert all(unet.attn_processors[name] is proc for name, proc in mine.items())
    with torch.no_grad():
        assert torch.equal(unet(**inputs).sample, before)
