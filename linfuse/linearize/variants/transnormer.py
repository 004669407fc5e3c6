"""TransNormer's NormAttention: linear attention without a denominator, its output RMS-normalised per head.

Per head, with φ = ELU + 1, N tokens and a learnable gain g (one per channel, initialised to 1)::

    A_i = φ(q_i)ᵀ (1/N) Σ_j φ(k_j) v_jᵀ
    O_i = g ⊙ A_i / sqrt(mean_c A_ic² + ε)          (the mean over the head's d channels)

The normalisation replaces the denominator φ(q_i)ᵀ Σ_j φ(k_j), whose size can make training unstable; the 1/N keeps
the state a mean, so that neither A nor O grows with the resolution. ε defaults to 1e-6.
"""

import torch
from torch import nn

from ...kernels.feature_maps import elu_plus_one
from ..options import positive_float
from ..processor import SelfAttentionProcessor
from .sana import positive_number

DEFAULT_NORM_EPS = 1e-6


class TransNormerAttnProcessor(SelfAttentionProcessor):
    """ELU+1 linear attention, no denominator, per-head RMSNorm with a learnable gain (TransNormer)."""

    method = "transnormer"
    option_specs = {"eps": positive_float()}

    def __init__(self, dim: int, heads: int, eps: float = DEFAULT_NORM_EPS):
        super().__init__(dim, heads)
        self.eps = positive_number("eps", eps)
        self.gain = nn.Parameter(torch.ones(dim))

    def layer_config(self) -> dict:
        return {"eps": self.eps}

    def initialize(self, attn) -> None:
        nn.init.ones_(self.gain)

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        dtype, v = q.dtype, v.to(acc)
        phi_q, phi_k = elu_plus_one(q.to(acc)), elu_plus_one(k.to(acc))
        state = torch.einsum("bnhk,bnhv->bhkv", phi_k, v) / phi_k.shape[1]  # (1/N) Σ_j φ(k_j) v_jᵀ
        out = torch.einsum("bnhk,bhkv->bnhv", phi_q, state)
        out = out * torch.rsqrt(out.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (out * self.gain.to(acc).view(self.heads, self.head_dim)).to(dtype)
