"""Tiny DiTs with the structure of FLUX, SD3(.5), PixArt and class-conditional DiT, and inputs that fit them."""

import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

TEXT_TOKENS = 5


def tiny_flux(seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=(2, 2, 4),
    ).eval()


def tiny_sd3(seed: int = 0) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).eval()


def tiny_pixart(seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=12, norm_type="ada_norm_single",
        use_additional_conditions=False,
    ).eval()


def tiny_dit(seed: int = 0) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=10,
    ).eval()


TINY_DITS = {"flux": tiny_flux, "sd3": tiny_sd3, "pixart": tiny_pixart, "dit": tiny_dit}


def flux_ids(height: int, width: int) -> torch.Tensor:
    """FLUX img_ids: (0, row, column) per packed token, raster order."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(-1, 3)


def dit_inputs(kind: str, model, batch: int = 2, height: int = 8, width: int = 8, seed: int = 1) -> dict:
    """Inputs of a forward pass; height and width are latent-token grid sizes for FLUX, latent pixels otherwise."""
    g = torch.Generator().manual_seed(seed)
    timestep = torch.full((batch,), 500.0 if kind != "dit" else 500)
    if kind == "flux":
        return {"hidden_states": torch.randn(batch, height * width, 8, generator=g),
                "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, 16, generator=g),
                "pooled_projections": torch.randn(batch, 16, generator=g), "timestep": timestep / 1000,
                "img_ids": flux_ids(height, width), "txt_ids": torch.zeros(TEXT_TOKENS, 3)}
    latent = torch.randn(batch, 4, height, width, generator=g)
    if kind == "sd3":
        return {"hidden_states": latent, "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, 16, generator=g),
                "pooled_projections": torch.randn(batch, 16, generator=g), "timestep": timestep}
    if kind == "pixart":
        return {"hidden_states": latent, "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, 12, generator=g),
                "timestep": timestep, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    return {"hidden_states": latent, "timestep": timestep.long(), "class_labels": torch.tensor([1, 3] * (batch // 2))}


def run(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]
