"""Whole tiny DiT pipelines (FLUX, SD3, PixArt-Σ) built from configs, saved as diffusers folders: random weights,
real pipeline classes, schedulers, VAEs, text encoders and tokenizers, nothing downloaded."""

import json
from pathlib import Path

import torch

from linfuse.distill.tokenizer import build_tokenizer, caption_words
from tests.tiny_dits import tiny_pixart, tiny_sd3

WORDS = caption_words(["red apple on a blue background", "green pear on a white background", "a cat"])
FLUX_SCHEDULER = {"shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 64, "max_image_seq_len": 1024}
NATIVE = {"flux": 32, "sd3": 16, "pixart": 16}  # pixels; the VAEs down-sample ×2


def tiny_vae(latent_channels: int, shift: float | None = 0.0):
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                        norm_num_groups=8, layers_per_block=1)
    if shift is not None:
        vae.register_to_config(shift_factor=shift)
    return vae.eval()


def _clip(tokenizer, width: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(4)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                            projection_dim=projection or width, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(5)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=width // 2, d_ff=2 * width,
                                   num_layers=1, num_heads=2, dropout_rate=0.0,
                                   pad_token_id=tokenizer.pad_token_id)).eval()


def tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=(2, 2, 4)).eval()


def build_pipeline(kind: str):
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        PixArtSigmaPipeline,
        StableDiffusion3Pipeline,
    )

    tokenizer = build_tokenizer(WORDS, max_length=8)
    if kind == "flux":
        return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=tiny_vae(2),
                            text_encoder=_clip(tokenizer, 16), tokenizer=tokenizer, text_encoder_2=_t5(tokenizer, 16),
                            tokenizer_2=tokenizer, transformer=tiny_flux_transformer())
    if kind == "sd3":
        return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(4),
                                        text_encoder=_clip(tokenizer, 8, 8), tokenizer=tokenizer,
                                        text_encoder_2=_clip(tokenizer, 8, 8), tokenizer_2=tokenizer,
                                        text_encoder_3=None, tokenizer_3=None, transformer=tiny_sd3())
    if kind == "pixart":
        return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=_t5(tokenizer, 12), vae=tiny_vae(4, None),
                                   transformer=tiny_pixart(), scheduler=DPMSolverMultistepScheduler())
    raise ValueError(kind)


def save_pipeline(kind: str, folder: Path) -> Path:
    """The tiny pipeline saved as a folder (fp32), with ``linfuse.json`` naming its native size."""
    folder = Path(folder)
    build_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    side = NATIVE[kind]
    (folder / "linfuse.json").write_text(json.dumps({"native_size": [side, side]}))
    return folder
