"""Rectified flow, as the FLUX-style teacher trains and CLEAR's recipe distils, and FLUX's latent layout.

    x_t = (1 − t)·x₀ + t·ε,   v = ε − x₀,   t = sigmoid(n), n ~ N(0, 1)  (logit-normal)
"""

import torch


def flow_noising(latents: torch.Tensor, generator: torch.Generator):
    """(noise, t, x_t, v): ε then n drawn from ``generator`` (in that order), x_t and v as in the module docstring."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    sigmas = torch.sigmoid(torch.randn(len(latents), generator=generator)).to(latents)
    t = sigmas.view(-1, *([1] * (latents.dim() - 1)))
    return noise, sigmas, (1 - t) * latents + t * noise, noise - latents


def pack(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FluxPipeline's 2×2 packing of (B, C, H, W) latents and the matching image position ids."""
    from diffusers import FluxPipeline

    batch, channels, height, width = latents.shape
    packed = FluxPipeline._pack_latents(latents, batch, channels, height, width)
    ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
    return packed, ids
