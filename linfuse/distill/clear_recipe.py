"""CLEAR's distillation of a flow-matching DiT (FLUX, SD3) into local-window attention (method clear).

The teacher is the pipeline's transformer, frozen; the student a copy whose attentions are restricted to windows of
radius r (``options: {radius: r, pool: f}``). Only the image branch's q/k/v/out projections train, with the pooled
variants' ``spatial_weight``; the text branch (``add_*_proj``), MLPs and norms stay the teacher's. On latents x₀
(teacher samples, cached, or encoded images), noise ε and t = sigmoid(n), n ~ N(0, 1)::

    x_t = (1 − t)·x₀ + t·ε            v = ε − x₀
    L = MSE(v̂_student, v) + w_kd · MSE(v̂_student, v̂_teacher) + w_feat · (1/L) Σ_l MSE(attn_l(student), attn_l(teacher))

the attention outputs taken after each layer's output projection (the image tokens of FLUX's double-stream blocks,
the joint sequence of its single-stream ones). The loop, checkpoints, resume and NaN guard are the trainer's.
"""

import torch

from ..errors import InvalidArgumentError
from ..pipelines.families import family, text_length
from .flow import flow_noising, pack
from .losses import linfusion_loss
from .recipe import Distillation

FLOW_FAMILIES = ("flux", "sd3")


class FlowConditioning:
    """Prompt encoding and one velocity prediction, as the family's pipeline does them."""

    def __init__(self, pipe):
        self.pipe, self.family = pipe, family(pipe)
        if self.family not in FLOW_FAMILIES:
            raise InvalidArgumentError(f"method clear distils flow-matching DiTs ({', '.join(FLOW_FAMILIES)}); "
                                       f"this pipeline is {self.family}")

    @torch.no_grad()
    def encode(self, captions: list[str], device) -> dict:
        length = text_length(self.pipe)
        if self.family == "flux":
            states, pooled, text_ids = self.pipe.encode_prompt(prompt=captions, prompt_2=None, device=device,
                                                               max_sequence_length=length)
            return {"encoder_hidden_states": states, "pooled_projections": pooled, "txt_ids": text_ids}
        states, _, pooled, _ = self.pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                       do_classifier_free_guidance=False, max_sequence_length=length)
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def velocity(self, transformer, noisy: torch.Tensor, sigmas: torch.Tensor, condition: dict) -> torch.Tensor:
        """v̂ for (B, C, H, W) latents at t = sigmas, in the same layout."""
        if self.family == "sd3":  # SD3 takes timesteps in [0, 1000]
            return transformer(hidden_states=noisy, timestep=sigmas * 1000, **condition).sample
        from diffusers import FluxPipeline

        batch, _, height, width = noisy.shape
        packed, image_ids = pack(noisy)
        extra = {}
        if self.pipe.transformer.config.guidance_embeds:  # FLUX.1-dev: the distilled guidance the teacher samples used
            extra["guidance"] = torch.full((batch,), 3.5, device=noisy.device)
        out = transformer(hidden_states=packed, timestep=sigmas, img_ids=image_ids, **condition, **extra).sample
        factor = self.pipe.vae_scale_factor
        return FluxPipeline._unpack_latents(out, height * factor, width * factor, factor)


class ClearDistillation(Distillation):
    """Distillation of a FLUX or SD3 pipeline's transformer into CLEAR local attention (see the module docstring)."""

    def __init__(self, config, accelerator):
        if config.train_projections is False or config.lora_rank:
            raise InvalidArgumentError("method clear trains the image branch's q/k/v/out projections (CLEAR's "
                                       "recipe); leave train_projections and lora_rank unset")
        super().__init__(config, accelerator)
        self.conditioning = FlowConditioning(self.pipe)

    def make_noise_scheduler(self):
        return None  # rectified flow: the noising is flow_noising

    def step(self, model, step: int, generator: torch.Generator) -> dict:
        config, device = self.config, self.accelerator.device
        batch = self.captioned_batch(generator)
        latents = self.latents(batch, generator)
        _, sigmas, noisy, velocity = flow_noising(latents, generator)
        condition = self.conditioning.encode(batch["captions"], device)
        with torch.no_grad(), self.accelerator.autocast(), self.teacher_feats.capture():
            teacher_v = self.conditioning.velocity(self.teacher, noisy, sigmas, condition)
        with self.accelerator.autocast(), self.student_feats.capture():
            student_v = self.conditioning.velocity(model, noisy, sigmas, condition)
        return linfusion_loss(student_v, teacher_v, velocity, self.student_feats.ordered(),
                              self.teacher_feats.ordered(), kd_weight=config.kd_weight,
                              feat_weight=config.feat_weight, task_only=step < config.warmup_steps)
