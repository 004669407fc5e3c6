"""LinFusion's distillation loss and the hooks that capture self-attention outputs.

    L = L_task + w_kd · L_kd + w_feat · L_feat
    L_task = MSE(ε̂_student, target)          target = ε, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ for v-prediction
    L_kd   = MSE(ε̂_student, ε̂_teacher)
    L_feat = (1/L) Σ_l MSE(attn1_l(student), attn1_l(teacher))   outputs after to_out, every replaced layer
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F


class AttentionOutputs:
    """Forward hooks that record the output of each given module, in the order given."""

    def __init__(self, modules):
        self.modules = list(modules)
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = []

    @contextmanager
    def capture(self):
        self.outputs.clear()
        self._handles = [module.register_forward_hook(self._recorder(i)) for i, module in enumerate(self.modules)]
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def _recorder(self, index: int):
        def hook(_module, _inputs, output):
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def ordered(self) -> list[torch.Tensor]:
        return [self.outputs[i] for i in range(len(self.modules))]


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    if len(student) != len(teacher) or not student:
        raise ValueError(f"feature loss needs matching non-empty layer lists; got {len(student)} and {len(teacher)}")
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]).mean()


def task_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under this scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported for distillation (epsilon or v_prediction)")


def linfusion_loss(student_pred, teacher_pred, target, student_feats, teacher_feats, *, kd_weight: float,
                   feat_weight: float, task_only: bool = False) -> dict:
    """All three terms (each logged); ``loss`` is the weighted sum, or the task term alone during warm-up."""
    task = F.mse_loss(student_pred.float(), target.float())
    kd = F.mse_loss(student_pred.float(), teacher_pred.float())
    feat = feature_loss(student_feats, teacher_feats)
    total = task if task_only else task + kd_weight * kd + feat_weight * feat
    return {"loss": total, "task": task, "kd": kd, "feat": feat}
