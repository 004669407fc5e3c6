"""Feature maps φ for kernelised attention, applied element-wise to queries and keys."""

import torch
import torch.nn.functional as F


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = ELU(x) + 1: positive everywhere, x + 1 for x > 0 and exp(x) for x <= 0 (LinFusion, RALA)."""
    return F.elu(x) + 1.0


def relu(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = max(x, 0) (Sana, SLAB, L²ViT)."""
    return F.relu(x)


def identity(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = x. The normaliser φ(q)·z may then be zero or negative: only for variants that control its sign."""
    return x


FEATURE_MAPS = {"elu1": elu_plus_one, "relu": relu, "identity": identity}
