"""``linfuse train-teacher`` for ``family: flux``: a small FLUX-style flow-matching DiT trained from scratch, offline.

The model is a diffusers ``FluxTransformer2DModel`` (double- and single-stream MMDiT blocks, 3-axis RoPE) on the
2×2-packed latents of an existing VAE (the bundled UNet teacher's, given as ``vae``; its latents are used as ``(z −
shift)·scale`` with shift 0), conditioned like FLUX: a CLIP text encoder's pooled output and a T5 encoder's token
states, both built from scratch on the caption vocabulary and trained with the transformer to predict the rectified-
flow velocity v = ε − x₀ (:mod:`.flow`), with captions dropped to "" at ``caption_dropout`` so that classifier-free
guidance (FluxPipeline's ``true_cfg_scale``) works. An exponential moving average of all three networks is exported
as a plain diffusers ``FluxPipeline`` folder (fp16 on disk) with a ``FlowMatchEulerDiscreteScheduler`` that shifts
its timesteps by the image's token count, as FLUX's does, and a ``linfuse.json`` naming the native size and the CLEAR
radius a conversion defaults to (``clear_radius``). Resumable from ``output_dir/transformer-train/checkpoints``.
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..pipelines.families import write_sidecar
from .config import from_mapping
from .data import DataConfig, build_source
from .flow import flow_noising, pack
from .outputs import check_destinations
from .teacher import TextArchitecture, _save_folder, build_text_encoder, ema_update, teacher_tokenizer, training_batch
from .trainer import Trainer, TrainSettings, make_accelerator

FLOW_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


@dataclass
class DiTArchitecture(TextArchitecture):
    heads: int = 4
    head_dim: int = 32
    double_layers: int = 4  # FLUX's joint (text and image streams apart) blocks
    single_layers: int = 4  # FLUX's single-stream blocks over [text; image]
    rope_axes: tuple[int, ...] = (8, 12, 12)  # RoPE dims per id axis (unused, y, x); sums to head_dim


@dataclass
class DiTTeacherConfig:
    family: str = "flux"
    output_dir: str = "runs/dit-teacher"
    export: str = "runs/linfuse-emoji-dit-teacher"
    vae: str = "assets/linfuse-emoji-teacher/vae"  # a trained AutoencoderKL folder (kept frozen)
    data: DataConfig = field(default_factory=lambda: DataConfig(resolution=128))
    architecture: DiTArchitecture = field(default_factory=DiTArchitecture)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=3000, batch_size=16,
                                                                       learning_rate=3e-4))
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    clear_radius: int = 4  # the CLEAR window a conversion of this model defaults to (its linfuse.json)

    def validate(self) -> None:
        if self.family != "flux":
            raise InvalidArgumentError(f"family must be 'flux' for a DiT teacher; got {self.family!r}")
        self.data.validate()
        if self.data.source == "teacher_samples":
            raise InvalidArgumentError("data.source 'teacher_samples' is for distillation; a teacher trains on images")
        self.train.validate()
        if not (Path(self.vae) / "config.json").is_file():
            raise InvalidArgumentError(f"vae must be a trained AutoencoderKL folder (config.json and weights); "
                                       f"{self.vae} is not one. Train the UNet teacher first "
                                       "(assets/configs/teacher.yaml) or point vae at another")
        arch = self.architecture
        if sum(arch.rope_axes) != arch.head_dim or len(arch.rope_axes) != 3:
            raise InvalidArgumentError(f"architecture.rope_axes must be 3 numbers summing to head_dim "
                                       f"{arch.head_dim}; got {arch.rope_axes}")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema_decay < 1:
            raise InvalidArgumentError("caption_dropout and ema_decay must be in [0, 1)")


def load_dit_teacher_config(mapping: dict) -> DiTTeacherConfig:
    config = from_mapping(DiTTeacherConfig, mapping, "config")
    config.validate()
    return config


def build_transformer(arch: DiTArchitecture, latent_channels: int):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4 * latent_channels, num_layers=arch.double_layers,
                                  num_single_layers=arch.single_layers, attention_head_dim=arch.head_dim,
                                  num_attention_heads=arch.heads, joint_attention_dim=arch.text_width,
                                  pooled_projection_dim=arch.text_width, guidance_embeds=False,
                                  axes_dims_rope=tuple(arch.rope_axes))


def build_t5(arch: DiTArchitecture, tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=arch.text_width, d_kv=arch.text_width // arch.text_heads,
                      d_ff=2 * arch.text_width, num_layers=arch.text_layers, num_heads=arch.text_heads,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5EncoderModel(config)


class FluxDenoiser(nn.Module):
    """Transformer + both text encoders as one module (accelerate wraps and synchronises them together); the
    prompt is encoded as FluxPipeline encodes it (CLIP pooled output, T5 token states, same token ids)."""

    def __init__(self, transformer, text_encoder, text_encoder_2, tokenizer):
        super().__init__()
        self.transformer, self.text_encoder, self.text_encoder_2 = transformer, text_encoder, text_encoder_2
        self.tokenizer = tokenizer

    def forward(self, packed, sigmas, captions, image_ids):
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(packed.device)
        pooled = self.text_encoder(ids).pooler_output
        states = self.text_encoder_2(ids)[0]
        text_ids = torch.zeros(ids.shape[1], 3, device=packed.device, dtype=packed.dtype)
        return self.transformer(hidden_states=packed, timestep=sigmas, pooled_projections=pooled,
                                encoder_hidden_states=states, txt_ids=text_ids, img_ids=image_ids).sample


def train_flux_teacher(config: DiTTeacherConfig, *, overwrite: bool = False) -> Path:
    """Train, then export the FluxPipeline folder; its ``output_dir`` and ``export`` are checked first as
    :func:`.teacher.train_teacher`'s are."""
    from diffusers import AutoencoderKL

    check_destinations("train-teacher", config.output_dir, config.export, overwrite=overwrite,
                       inputs={"vae": config.vae, "data.path": config.data.path})
    source = build_source(config.data)
    accelerator = make_accelerator(config.train)
    vae = AutoencoderKL.from_pretrained(config.vae).to(accelerator.device).requires_grad_(False)
    tokenizer = teacher_tokenizer(config, source)
    arch = config.architecture
    torch.manual_seed(config.train.seed)
    denoiser = FluxDenoiser(build_transformer(arch, vae.config.latent_channels), build_text_encoder(arch, tokenizer),
                            build_t5(arch, tokenizer), tokenizer)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.train.learning_rate,
                                  weight_decay=config.train.weight_decay)
    model, optimizer = accelerator.prepare(denoiser, optimizer)

    def step(_, generator):
        latents, captions = training_batch(source, vae, config.train.batch_size, config.caption_dropout, generator)
        _, sigmas, noisy, velocity = flow_noising(latents, generator)
        packed, image_ids = pack(noisy)
        with accelerator.autocast():
            prediction = model(packed, sigmas, captions, image_ids)
        return {"loss": F.mse_loss(prediction.float(), pack(velocity)[0])}

    Trainer(Path(config.output_dir) / "transformer-train", config.train, accelerator, model, optimizer,
            denoiser.parameters(), {"denoiser": denoiser, "ema": ema}, step, description="DiT teacher",
            on_step_end=ema_update(ema, denoiser, config.ema_decay)).run()
    if not accelerator.is_main_process:
        return Path(config.export)
    return export_flux_pipeline(config, vae, ema, overwrite=overwrite)


def export_flux_pipeline(config: DiTTeacherConfig, vae, ema: FluxDenoiser, *, overwrite: bool = False) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    vae = copy.deepcopy(vae)
    vae.register_to_config(shift_factor=0.0)  # FluxPipeline reads (z / scale) + shift
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLOW_SCHEDULER), vae=vae,
                        text_encoder=ema.text_encoder, tokenizer=ema.tokenizer, text_encoder_2=ema.text_encoder_2,
                        tokenizer_2=copy.deepcopy(ema.tokenizer), transformer=ema.transformer)
    out = Path(config.export)
    _save_folder(pipe.to(torch.float16), out, overwrite=overwrite)
    side = config.data.resolution
    write_sidecar(out, native_size=(side, side), method_options={"clear": {"radius": config.clear_radius}})
    return out
