"""``linfuse distill CONFIG.yaml``: LinFusion-style distillation of a pipeline's UNet into linear self-attention.

The teacher is the pipeline's UNet, frozen. The student is a copy of it with its ``attn1`` layers converted by
``method`` (teacher projections and new parts initialised from them, or ``init_weights``; ``method: hybrid`` keeps
some layers softmax). What trains: the processors and the converted layers' q/k/v/out, as LinFusion's own recipe
does (AdamW over every parameter of its layers); ``train_projections: false`` trains the processors only;
``lora_rank: r`` trains rank-r LoRA adapters on q/k/v/out instead (:mod:`.lora`).
Timesteps are uniform over the training schedule, noise is added with ``DDPMScheduler.add_noise``; see ``losses``
for the loss.
"""

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidArgumentError
from ..fileio import atomic_folder
from ..linearize import linearize, save_linear_weights
from ..linearize.convert import linearized_layers, trainable_parameters
from ..linearize.layers import resolve_denoiser
from ..linearize.registry import check_method_options
from ..pipelines.families import SIDECAR
from .config import from_mapping, read_yaml
from .data import DataConfig, build_source, drop_captions
from .lora import LORA_DIR, add_projection_lora, save_lora, take_lora
from .losses import AttentionOutputs, linfusion_loss, task_target
from .outputs import PIPELINE, check_destinations
from .trainer import Trainer, TrainSettings, make_accelerator

LINEAR_WEIGHTS_DIR = "linear_attention"


@dataclass
class DistillConfig:
    model: str = ""  # the teacher: a diffusers pipeline folder or Hub id
    output_dir: str = "runs/distill"
    export: str | None = None  # a student pipeline folder: the teacher's files plus linear_attention/
    method: str = "linfusion"
    init_weights: str | None = None
    mid_dim: int | None = None
    train_projections: bool | None = None  # None: the method's default (true: q/k/v/out train with the processors)
    lora_rank: int = 0  # > 0: LoRA adapters of this rank on q/k/v/out train instead (exported as a diffusers LoRA)
    options: dict = field(default_factory=dict)  # the method's options, e.g. {softmax_layers: 2, base: sana}
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    kd_weight: float = 0.5
    feat_weight: float = 0.5
    variance_weight: float = 0.1  # lit: KD weight of the learned variance (the noise's is kd_weight)
    warmup_steps: int = 0  # task loss only for this many first steps (LinFusion's advice against early NaNs)
    caption_dropout: float = 0.0  # share of captions trained as "" (the unconditional branch that CFG reads)

    def validate(self) -> None:
        if not self.model:
            raise InvalidArgumentError("model must name the teacher pipeline (a folder or Hub id)")
        mid_dim = {} if self.mid_dim is None else {"mid_dim": self.mid_dim}
        check_method_options(self.method, {**self.options, **mid_dim})  # each option's kind and range
        self.data.validate()
        self.train.validate()
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise InvalidArgumentError(f"lora_rank must be an integer >= 0 (0: no LoRA); got {self.lora_rank!r}")
        if self.lora_rank and self.train_projections:
            raise InvalidArgumentError("lora_rank > 0 trains LoRA adapters instead of the projections; leave "
                                       "train_projections unset (or false) with it")
        if self.lora_rank and self.method == "lit":
            raise InvalidArgumentError("lora_rank applies to the UNet methods; LiT re-initialises its projections")
        for name in ("kd_weight", "feat_weight", "variance_weight"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not 0 <= self.caption_dropout < 1:
            raise InvalidArgumentError(f"caption_dropout must be in [0, 1); got {self.caption_dropout}")
        if self.caption_dropout and self.method == "lit":
            raise InvalidArgumentError("caption_dropout applies to text-conditioned models; LiT is class-conditional")
        if not 0 <= self.warmup_steps <= self.train.steps:
            raise InvalidArgumentError(f"warmup_steps must be in [0, train.steps={self.train.steps}]; "
                                       f"got {self.warmup_steps}")


def load_distill_config(path) -> DistillConfig:
    config = from_mapping(DistillConfig, read_yaml(path), "config")
    config.validate()
    return config


def load_teacher(model: str):
    """The teacher pipeline in fp32, from a folder or Hub id (the loader ``load_pipeline`` uses)."""
    from ..pipelines.loading import _from_pretrained

    return _from_pretrained(model, torch.float32)


def encode_captions(pipe, captions: list[str], resolution: int, device) -> tuple[torch.Tensor, dict | None]:
    """Text conditioning for SD-1.x/2.x (hidden states) and SDXL (plus pooled embeds and size ids)."""
    with torch.no_grad():
        encoded = pipe.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=False)
    if len(encoded) == 2:
        return encoded[0], None
    hidden, _, pooled, _ = encoded
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=hidden.dtype)
    return hidden, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(captions), 1).to(device)}


class Distillation:
    """Teacher, student, data and the per-step loss for one config."""

    def __init__(self, config: DistillConfig, accelerator):
        self.config, self.accelerator = config, accelerator
        self.pipe = load_teacher(config.model)
        self.pipe.set_progress_bar_config(disable=True)
        self.teacher = resolve_denoiser(self.pipe).requires_grad_(False).eval()
        for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipe, part, None) is not None:
                getattr(self.pipe, part).requires_grad_(False)
        self.student = copy.deepcopy(self.teacher)
        self.report = linearize(self.student, method=config.method, weights=config.init_weights,
                                mid_dim=config.mid_dim, **config.options)
        self.student.requires_grad_(False)
        if config.lora_rank:
            self.params = add_projection_lora(self.student, config.lora_rank)
        else:
            self.params = trainable_parameters(self.student, config.train_projections)
        for param in self.params:
            param.requires_grad_(True)
        self.noise_scheduler = self.make_noise_scheduler()
        self.source = build_source(config.data, pipe=self.pipe, cache_dir=Path(config.output_dir) / "teacher_samples")
        converted = linearized_layers(self.student)
        self.teacher_feats = AttentionOutputs(self.teacher.get_submodule(name) for name, _ in converted)
        self.student_feats = AttentionOutputs(attn for _, attn in converted)

    def make_noise_scheduler(self):
        """The forward-noising schedule: DDPM with the teacher scheduler's betas."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def processors(self) -> dict:
        """The converted layers (processor and projections), keyed by layer name: what checkpoints store."""
        return {"processors": torch.nn.ModuleDict({name.replace(".", "__"): attn
                                                   for name, attn in linearized_layers(self.student)})}

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].to(self.accelerator.device)
        vae = self.pipe.vae
        with torch.no_grad():
            posterior = vae.encode(batch["pixels"].to(self.accelerator.device, vae.dtype)).latent_dist
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            return (posterior.sample(generator=generator) - shift) * vae.config.scaling_factor

    def captioned_batch(self, generator: torch.Generator) -> dict:
        """The source's next batch, its captions dropped to "" at ``caption_dropout`` (no draw when it is 0, so
        configs without it keep their random stream)."""
        batch = self.source.batch(generator, self.config.train.batch_size)
        if self.config.caption_dropout:
            batch["captions"] = drop_captions(batch["captions"], self.config.caption_dropout, generator)
        return batch

    def noisy_batch(self, generator: torch.Generator):
        """(batch, clean latents, noise, timesteps, noisy latents): timesteps uniform, DDPM forward noising."""
        batch = self.captioned_batch(generator)
        latents = self.latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),),
                                  generator=generator).to(self.accelerator.device)
        return batch, latents, noise, timesteps, self.noise_scheduler.add_noise(latents, noise, timesteps)

    def step(self, model, step: int, generator: torch.Generator) -> dict:
        config, device = self.config, self.accelerator.device
        batch, latents, noise, timesteps, noisy = self.noisy_batch(generator)
        hidden, added = encode_captions(self.pipe, batch["captions"], config.data.resolution, device)
        with torch.no_grad(), self.accelerator.autocast(), self.teacher_feats.capture():
            teacher_pred = self.teacher(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        with self.accelerator.autocast(), self.student_feats.capture():
            student_pred = model(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        return linfusion_loss(student_pred, teacher_pred, task_target(self.noise_scheduler, latents, noise, timesteps),
                              self.student_feats.ordered(), self.teacher_feats.ordered(),
                              kd_weight=config.kd_weight, feat_weight=config.feat_weight,
                              task_only=step < config.warmup_steps)


def distill(config: DistillConfig, *, overwrite: bool = False) -> Path:
    """Run (or resume) the distillation; writes OUTPUT/linear_attention and, if asked, the student pipeline.

    Before anything loads, an ``output_dir`` or ``export`` folder that exists and linfuse did not make is refused
    unless ``overwrite`` (:func:`.outputs.check_destinations`).
    """
    inputs = {"model": config.model, "init_weights": config.init_weights, "data.path": config.data.path}
    check_destinations("distill", config.output_dir, config.export, overwrite=overwrite, inputs=inputs)
    accelerator = make_accelerator(config.train)
    torch.manual_seed(config.train.seed)
    job = job_class(config)(config, accelerator)
    optimizer = torch.optim.AdamW(job.params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    model, optimizer = accelerator.prepare(job.student, optimizer)
    job.teacher.to(accelerator.device)
    Trainer(config.output_dir, config.train, accelerator, model, optimizer, job.params, job.processors(),
            lambda step, generator: job.step(model, step, generator), description="distill").run()
    out = Path(config.output_dir) / LINEAR_WEIGHTS_DIR
    if accelerator.is_main_process:
        lora = take_lora(job.student) if config.lora_rank else None  # the student's projections: the teacher's
        if lora is not None:
            save_lora(type(job.pipe), lora, Path(config.output_dir) / LORA_DIR)
        save_linear_weights(job.student, out)
        if config.export:
            export_student(job, Path(config.export), lora, overwrite=overwrite)
    return out


def job_class(config: DistillConfig) -> type:
    """LiT's recipe for class-conditional DiTs (method lit), CLEAR's for flow-matching DiTs (method clear),
    LinFusion's for UNets otherwise."""
    if config.method == "lit":
        from .lit import LiTDistillation

        return LiTDistillation
    if config.method == "clear":
        from .clear_recipe import ClearDistillation

        return ClearDistillation
    return Distillation


def export_student(job: Distillation, out: Path, lora: dict | None = None, *, overwrite: bool = False) -> Path:
    """The teacher pipeline's files (fp16) plus ``linear_attention/`` (fp16), and with LoRA distillation ``lora/``
    (diffusers' format, for ``pipe.load_lora_weights``): loadable by ``load_pipeline``."""

    def write(folder: Path) -> None:
        _reset_tokenizers(job.pipe)
        job.pipe.save_pretrained(folder, safe_serialization=True)
        sidecar = Path(job.config.model) / SIDECAR
        if sidecar.is_file():  # the model's native size and default options (see pipelines.families)
            shutil.copyfile(sidecar, folder / SIDECAR)
        save_linear_weights(job.student, folder / LINEAR_WEIGHTS_DIR, dtype=torch.float16)
        _to_half_on_disk(folder)
        if lora is not None:
            save_lora(type(job.pipe), lora, folder / LORA_DIR)

    return atomic_folder(out, write, made_by="distill", kind=PIPELINE, overwrite=overwrite)


def _reset_tokenizers(pipe) -> None:
    """Clear the padding and truncation that encoding left on fast tokenizers, so that the exported tokenizer.json
    is the teacher's whatever the run encoded (a resumed run encodes nothing before the export)."""
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        backend = getattr(getattr(pipe, name, None), "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()


def _to_half_on_disk(folder: Path) -> None:
    """Rewrite every fp32 safetensors file of a pipeline folder as fp16 (keeps the bundle small)."""
    from safetensors.torch import load_file, save_file

    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        if any(t.dtype == torch.float32 for t in tensors.values()):
            save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, path,
                      metadata={"format": "pt"})
