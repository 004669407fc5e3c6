"""LiT's hybrid knowledge distillation for a class-conditional DiT whose attention became linear (method lit).

A DiT with learned variance predicts 2C channels, ε̂ ‖ Σ̂ (diffusers ``DiTTransformer2DModel`` with
``out_channels = 2·in_channels``). With teacher outputs ε̂ₜ, Σ̂ₜ and the drawn noise ε::

    L = MSE(ε̂ₛ, ε) + w_kd · MSE(ε̂ₛ, ε̂ₜ) + w_Σ · MSE(Σ̂ₛ, Σ̂ₜ)          w_Σ < w_kd (LiT weights the variance less)

LiT's variational-bound term on Σ is replaced here by the teacher's Σ̂ₜ, which already minimises it. Class labels
come from the batch (the emoji source gives each glyph's index) or from captions through the pipeline's id2label.
"""

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .recipe import Distillation


def lit_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, noise: torch.Tensor, *, kd_weight: float,
             variance_weight: float, task_only: bool = False) -> dict:
    """Each term logged; ``loss`` is the weighted sum (the task term alone during warm-up)."""
    channels = noise.shape[1]
    student_eps, student_var = student_out.float()[:, :channels], student_out.float()[:, channels:]
    teacher_eps, teacher_var = teacher_out.float()[:, :channels], teacher_out.float()[:, channels:]
    task = F.mse_loss(student_eps, noise.float())
    kd = F.mse_loss(student_eps, teacher_eps)
    variance = F.mse_loss(student_var, teacher_var) if student_var.shape[1] else kd.new_zeros(())
    total = task if task_only else task + kd_weight * kd + variance_weight * variance
    return {"loss": total, "task": task, "kd": kd, "variance": variance}


class LiTDistillation(Distillation):
    """Distillation of a DiTPipeline's transformer into LiT linear attention."""

    def class_labels(self, batch: dict) -> torch.Tensor:
        if "labels" in batch:
            labels = batch["labels"]
        else:
            try:
                labels = torch.tensor(self.pipe.get_label_ids(batch["captions"]))
            except (AttributeError, ValueError, KeyError) as exc:
                raise InvalidArgumentError(
                    "lit distillation needs class labels: use data.source emoji, or captions that are class names "
                    f"of the pipeline's id2label ({exc})") from exc
        classes = self.teacher.config.num_embeds_ada_norm
        if int(labels.max()) >= classes:
            raise InvalidArgumentError(f"class label {int(labels.max())} is outside the DiT's {classes} classes")
        return labels.to(self.accelerator.device)

    def step(self, model, step: int, generator: torch.Generator) -> dict:
        config = self.config
        batch, _, noise, timesteps, noisy = self.noisy_batch(generator)
        labels = self.class_labels(batch)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_out = self.teacher(noisy, timestep=timesteps, class_labels=labels).sample
        with self.accelerator.autocast():
            student_out = model(noisy, timestep=timesteps, class_labels=labels).sample
        return lit_loss(student_out, teacher_out, noise, kd_weight=config.kd_weight,
                        variance_weight=config.variance_weight, task_only=step < config.warmup_steps)
