"""``linfuse train-teacher``: a small text-to-image latent diffusion model trained from scratch, offline.

Two stages, each resumable from its own checkpoints under ``output_dir``:
1. ``vae/``: an AutoencoderKL (down-sampling 2^(len(vae_channels)-1)) trained with MSE + kl_weight·KL on the data;
   its ``scaling_factor`` is then set to 1/std of the latents, as Stable Diffusion does.
2. ``unet/``: a UNet2DConditionModel with self- and cross-attention at the latent resolution, trained jointly
   with a CLIP text encoder built from scratch on the caption vocabulary, ε-prediction on the scaled-linear DDPM
   schedule; an exponential moving average of both (decay warmed up as in ``warmed_up_decay``) is what gets exported.
The result is a plain diffusers StableDiffusionPipeline folder (safetensors, fp16 on disk).
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..fileio import atomic_folder
from .config import from_mapping, read_yaml
from .data import DataConfig, EmojiBatches, build_source, drop_captions
from .outputs import PIPELINE, check_destinations
from .tokenizer import build_tokenizer, caption_words
from .trainer import Trainer, TrainSettings, make_accelerator

SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


@dataclass
class TextArchitecture:
    """The text encoder(s) trained from scratch with a teacher: width, layers, heads, tokens."""

    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 16


@dataclass
class Architecture(TextArchitecture):
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_heads: int = 8


@dataclass
class TeacherConfig:
    output_dir: str = "runs/teacher"
    export: str = "runs/linfuse-emoji-teacher"
    data: DataConfig = field(default_factory=DataConfig)
    architecture: Architecture = field(default_factory=Architecture)
    vae: TrainSettings = field(default_factory=lambda: TrainSettings(steps=800, batch_size=16, learning_rate=5e-4))
    unet: TrainSettings = field(default_factory=lambda: TrainSettings(steps=3000, batch_size=32,
                                                                      learning_rate=3e-4))
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    ema_decay: float = 0.999

    def validate(self) -> None:
        self.data.validate()
        if self.data.source == "teacher_samples":
            raise InvalidArgumentError("data.source 'teacher_samples' is for distillation; a teacher trains on images")
        self.vae.validate("vae")
        self.unet.validate("unet")
        if not 0 <= self.caption_dropout < 1:
            raise InvalidArgumentError(f"caption_dropout must be in [0, 1); got {self.caption_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise InvalidArgumentError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        down = 2 ** (len(self.architecture.vae_channels) - 1) * 2 ** (len(self.architecture.unet_channels) - 1)
        if self.data.resolution % down:
            raise InvalidArgumentError(f"data.resolution {self.data.resolution} must be a multiple of {down} (VAE "
                                       "and UNet down-sampling together) for this architecture")


def load_teacher_config(path) -> TeacherConfig:
    config = from_mapping(TeacherConfig, read_yaml(path), "config")
    config.validate()
    return config


def build_vae(arch: Architecture):
    from diffusers import AutoencoderKL

    blocks = len(arch.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=arch.vae_channels,
                         latent_channels=arch.latent_channels, layers_per_block=1,
                         norm_num_groups=min(32, arch.vae_channels[0]))


def build_unet(arch: Architecture, latent_size: int):
    from diffusers import UNet2DConditionModel

    blocks = len(arch.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (blocks - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (blocks - 1)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=arch.latent_channels,
                                out_channels=arch.latent_channels, block_out_channels=arch.unet_channels,
                                down_block_types=down, up_block_types=up, layers_per_block=arch.layers_per_block,
                                cross_attention_dim=arch.text_width, attention_head_dim=arch.attention_heads,
                                norm_num_groups=min(32, arch.unet_channels[0]))


def build_text_encoder(arch: TextArchitecture, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=arch.text_width,
                            intermediate_size=2 * arch.text_width, num_hidden_layers=arch.text_layers,
                            num_attention_heads=arch.text_heads, max_position_embeddings=arch.max_tokens,
                            projection_dim=arch.text_width, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def teacher_tokenizer(config: TeacherConfig, source):
    captions = source.captions() if isinstance(source, EmojiBatches) else [c for _, c in source.items]
    words = caption_words(captions + ["two three s"])
    return build_tokenizer(words, max_length=config.architecture.max_tokens)


def encode_prompts(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


class Denoiser(nn.Module):
    """UNet + text encoder as one module, so accelerate wraps (and synchronises) both together."""

    def __init__(self, unet, text_encoder, tokenizer):
        super().__init__()
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer

    def forward(self, noisy, timesteps, captions):
        return self.unet(noisy, timesteps, encode_prompts(self.tokenizer, self.text_encoder, captions)).sample


def train_vae(config: TeacherConfig, source, accelerator) -> Path:
    out = Path(config.output_dir) / "vae"
    if (out / "config.json").exists():
        return out
    torch.manual_seed(config.vae.seed)
    vae = build_vae(config.architecture)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae.learning_rate, weight_decay=config.vae.weight_decay)
    model, optimizer = accelerator.prepare(vae, optimizer)

    def step(_, generator):
        pixels = source.batch(generator, config.vae.batch_size)["pixels"].to(accelerator.device)
        posterior = model.encode(pixels).latent_dist
        recon = model.decode(posterior.sample(generator=generator)).sample
        mse = F.mse_loss(recon.float(), pixels)
        kl = posterior.kl().mean() / pixels[0].numel()
        return {"loss": mse + config.kl_weight * kl, "mse": mse, "kl": kl}

    Trainer(Path(config.output_dir) / "vae-train", config.vae, accelerator, model, optimizer, vae.parameters(),
            {"vae": vae}, step, description="teacher VAE").run()
    vae.register_to_config(scaling_factor=latent_scale(vae, source))
    _save_folder(vae, out, overwrite=True)  # inside the run folder, checked before training
    return out


@torch.no_grad()
def latent_scale(vae, source, samples: int = 256) -> float:
    """1 / std of the latent means over a fixed set of samples."""
    pixels = source.batch(torch.Generator().manual_seed(12345), samples)["pixels"]
    latents = vae.encode(pixels.to(vae.device)).latent_dist.mean
    return float(1.0 / latents.float().std())


def _save_folder(model, out: Path, *, overwrite: bool) -> None:
    atomic_folder(out, lambda tmp: model.save_pretrained(tmp, safe_serialization=True), made_by="train-teacher",
                  kind=PIPELINE, overwrite=overwrite)


def train_denoiser(config: TeacherConfig, source, vae, accelerator):
    from diffusers import DDPMScheduler

    tokenizer = teacher_tokenizer(config, source)
    torch.manual_seed(config.unet.seed)
    latent_size = config.data.resolution // 2 ** (len(config.architecture.vae_channels) - 1)
    denoiser = Denoiser(build_unet(config.architecture, latent_size),
                        build_text_encoder(config.architecture, tokenizer), tokenizer)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    scheduler = DDPMScheduler.from_config(SCHEDULER)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.unet.learning_rate,
                                  weight_decay=config.unet.weight_decay)
    model, optimizer = accelerator.prepare(denoiser, optimizer)
    vae = vae.to(accelerator.device).requires_grad_(False)

    def step(_, generator):
        latents, captions = training_batch(source, vae, config.unet.batch_size, config.caption_dropout, generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps.to(latents.device))
        with accelerator.autocast():
            prediction = model(noisy, timesteps.to(latents.device), captions)
        loss = F.mse_loss(prediction.float(), noise)
        return {"loss": loss}

    Trainer(Path(config.output_dir) / "unet-train", config.unet, accelerator, model, optimizer,
            denoiser.parameters(), {"denoiser": denoiser, "ema": ema}, step, description="teacher UNet",
            on_step_end=ema_update(ema, denoiser, config.ema_decay)).run()
    return ema


def training_batch(source, vae, size: int, caption_dropout: float, generator: torch.Generator):
    """(latents, captions) of one step: images encoded and sampled from the VAE posterior, scaled as the denoiser
    sees them, and each caption replaced by "" with probability ``caption_dropout`` (for classifier-free guidance)."""
    batch = source.batch(generator, size)
    with torch.no_grad():
        posterior = vae.encode(batch["pixels"].to(vae.device)).latent_dist
        latents = posterior.sample(generator=generator) * vae.config.scaling_factor
    return latents, drop_captions(batch["captions"], caption_dropout, generator)


def ema_update(ema: nn.Module, live: nn.Module, target_decay: float):
    """The per-step callback that moves ``ema``'s parameters towards ``live``'s with the warmed-up decay."""

    def update(step: int) -> None:
        decay = warmed_up_decay(target_decay, step)
        with torch.no_grad():
            for average, current in zip(ema.parameters(), live.parameters(), strict=True):
                average.lerp_(current.detach(), 1 - decay)

    return update


def warmed_up_decay(target: float, step: int) -> float:
    """min(target, (1 + step) / (10 + step)): early averages forget the random initialisation quickly."""
    return min(target, (1 + step) / (10 + step))


def export_pipeline(config: TeacherConfig, vae, ema: Denoiser, *, overwrite: bool = False) -> Path:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=ema.text_encoder, tokenizer=ema.tokenizer, unet=ema.unet,
                                   scheduler=DPMSolverMultistepScheduler.from_config(SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    out = Path(config.export)
    _save_folder(pipe.to(torch.float16), out, overwrite=overwrite)
    return out


def train_teacher(config: TeacherConfig, *, overwrite: bool = False) -> Path:
    """Both stages (each skipped once done, each resumable), then the exported pipeline folder. An ``output_dir`` or
    ``export`` that exists and linfuse did not make is refused before training unless ``overwrite``."""
    from diffusers import AutoencoderKL

    check_destinations("train-teacher", config.output_dir, config.export, overwrite=overwrite,
                       inputs={"data.path": config.data.path})
    source = build_source(config.data)
    accelerator = make_accelerator(config.vae)
    vae = AutoencoderKL.from_pretrained(train_vae(config, source, accelerator))
    accelerator = make_accelerator(config.unet)
    ema = train_denoiser(config, source, vae, accelerator)
    if not accelerator.is_main_process:
        return Path(config.export)
    return export_pipeline(config, vae, ema, overwrite=overwrite)
