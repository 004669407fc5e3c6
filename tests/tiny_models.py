"""Tiny diffusers models with the block structure of SD-1.5, SD-2.1 and SDXL, built from configs (no hub)."""

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "tiny-clip-tokenizer"
TEXT_WIDTH = 32

SD15_UNET = dict(
    sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=TEXT_WIDTH, attention_head_dim=2,  # diffusers' legacy name: the number of heads, as SD-1.5's 8
)
SD21_UNET = dict(SD15_UNET, attention_head_dim=(2, 4, 8, 8), use_linear_projection=True, upcast_attention=True)
SDXL_UNET = dict(
    sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), use_linear_projection=True,
    cross_attention_dim=2 * TEXT_WIDTH, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * 8,
)
UNET_CONFIGS = {"sd15": SD15_UNET, "sd21": SD21_UNET, "sdxl": SDXL_UNET}


def tiny_unet(kind: str = "sd15", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIGS[kind]).eval()


def unet_inputs(unet, batch: int = 2, height: int = 8, width: int = 8, seed: int = 1) -> dict:
    """A latent, a timestep and text conditioning that fit the UNet (with SDXL's added conditions)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn(batch, 4, height, width, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 5, unet.config.cross_attention_dim, generator=g),
    }
    if unet.config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, TEXT_WIDTH, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1),
        }
    return inputs


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, sample_size=64,
    ).eval()  # four blocks: a VAE scale factor of 8, as in Stable Diffusion


def tiny_text_encoder(with_projection: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=540, hidden_size=TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=TEXT_WIDTH, bos_token_id=538, eos_token_id=539, pad_token_id=539,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_sd_pipeline(kind: str = "sd15") -> StableDiffusionPipeline:
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if kind == "sd21" else "epsilon")
    return StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(), unet=tiny_unet(kind),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), text_encoder_2=tiny_text_encoder(with_projection=True),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=tiny_unet("sdxl"), scheduler=scheduler,
    )
