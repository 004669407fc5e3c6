"""RALA: rank-augmented linear attention — query-conditioned key re-weighting, LePE and an output gate.

Per head, with φ = ELU + 1, s = d^-1/2 and q̄ = (1/N) Σ_i φ(q_i)::

    α_j   = N · softmax_j(s · q̄·φ(k_j))                   (mean 1 over the keys)
    A_i   = φ(q_i)ᵀ Σ_j α_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j α_j φ(k_j) + ε·N)
    O_i   = (A_i + DWConv_{k×k}(V)_i) ⊙ (1 + G(x_i))

where the k×k depth-wise convolution (LePE) runs over all C channels of V on the token grid, G = Linear(C→C) on the
layer input, split into heads like O. ``initialize`` zeroes the convolution and G, so a converted layer starts as
the re-weighted ELU+1 linear attention over the teacher's projections. RALA's gate is a plain projection that
multiplies the output; the 1 + G form starts it at identity. RALA's 2-D RoPE on the numerator features is left out
(it assumes a fixed frequency layout trained from scratch).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import DEFAULT_EPS, linear_attention
from ...kernels.feature_maps import elu_plus_one
from ..options import odd_integer, positive_float
from ..processor import SelfAttentionProcessor
from ..token_conv import TokenDepthwiseConv
from .sana import positive_number


class RalaAttnProcessor(SelfAttentionProcessor):
    """ELU+1 linear attention with softmax key re-weighting, a k×k LePE on V and a 1 + G(x) output gate (RALA)."""

    method = "rala"
    option_specs = {"kernel_size": odd_integer(), "eps": positive_float()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 5, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.lepe = TokenDepthwiseConv(dim, kernel_size)
        self.kernel_size, self.eps = kernel_size, positive_number("eps", eps)
        self.gate = nn.Linear(dim, dim)

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "eps": self.eps}

    def initialize(self, attn) -> None:
        self.lepe.zero_init()
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        dtype = q.dtype
        phi_q, phi_k, v, x = elu_plus_one(q.to(acc)), elu_plus_one(k.to(acc)), v.to(acc), x.to(acc)
        count = phi_k.shape[1]
        logits = torch.einsum("bnhd,bhd->bnh", phi_k, phi_q.mean(dim=1)) * self.head_dim**-0.5
        weights = logits.softmax(dim=1) * count  # α_j, (B, N, heads)
        out = linear_attention(phi_q, phi_k * weights.unsqueeze(-1), v, feature_map="identity", eps=self.eps,
                               layout="bnhd")
        out = out + self.lepe(v.flatten(2), self.grid_for(count)).view_as(out)
        gate = F.linear(x, self.gate.weight.to(acc), self.gate.bias.to(acc)).view_as(out).add_(1.0)
        return (out * gate).to(dtype)
