"""L²ViT's linear global attention: ReLU kernel, per-head temperature, floored normaliser, local concentration.

Per head h, with φ = ReLU and the *sum*-form normaliser floored at ``floor`` (100 in L²ViT)::

    G_i = τ_h · φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / max(φ(q_i)ᵀ Σ_j φ(k_j), floor)
    O   = G + LCM(G),   LCM = DWConv_{k×k} → GELU → GroupNorm(1 group) → DWConv_{k×k}   (k = 7, on the token grid)

The floor keeps the division stable (no ε needed), but it makes the output scale depend on the token count while
the normaliser is below it. L²ViT trains from scratch with τ initialised at d^-1/2; for conversion τ starts at 1,
so the layer starts as normalised ReLU attention over the teacher's projections. L²ViT's LCM uses BatchNorm; a
one-group GroupNorm replaces it so that a sample's output does not depend on the rest of the batch.
``initialize`` zeroes the last convolution of the LCM (and sets τ = 1).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..options import odd_integer, positive_float
from ..processor import SelfAttentionProcessor
from ..token_conv import TokenDepthwiseConv
from .sana import positive_number


class LocalConcentration(nn.Module):
    """DWConv_{k×k} → GELU → GroupNorm(1, C) → DWConv_{k×k} over tokens (B, N, C) on an (H, W) grid."""

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__()
        self.conv1 = TokenDepthwiseConv(channels, kernel_size)
        self.norm = nn.GroupNorm(1, channels)
        self.conv2 = TokenDepthwiseConv(channels, kernel_size)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        hidden = F.gelu(self.conv1(tokens, grid))
        weight, bias = self.norm.weight.to(hidden.dtype), self.norm.bias.to(hidden.dtype)
        hidden = F.group_norm(hidden.transpose(1, 2), 1, weight, bias, self.norm.eps).transpose(1, 2)
        return self.conv2(hidden, grid)


class L2ViTAttnProcessor(SelfAttentionProcessor):
    """ReLU linear attention with a per-head temperature and a floored normaliser, + a local concentration module."""

    method = "l2vit"
    option_specs = {"kernel_size": odd_integer(), "floor": positive_float()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 7, floor: float = 100.0):
        super().__init__(dim, heads)
        self.concentration = LocalConcentration(dim, kernel_size)
        self.kernel_size, self.floor = kernel_size, positive_number("floor", floor)
        self.temperature = nn.Parameter(torch.ones(heads))

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "floor": self.floor}

    def initialize(self, attn) -> None:
        nn.init.ones_(self.temperature)
        self.concentration.conv2.zero_init()

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        dtype, v = q.dtype, v.to(acc)
        phi_q, phi_k = F.relu(q.to(acc)), F.relu(k.to(acc))
        state = torch.einsum("bnhk,bnhv->bhkv", phi_k, v)  # Σ_j φ(k_j) v_jᵀ
        normaliser = torch.einsum("bnhk,bhk->bnh", phi_q, phi_k.sum(dim=1)).clamp_min(self.floor)
        scale = self.temperature.to(acc) / normaliser  # (B, N, heads)
        out = torch.einsum("bnhk,bhkv->bnhv", phi_q, state).mul_(scale.unsqueeze(-1))
        local = self.concentration(out.flatten(2), self.grid_for(out.shape[1]))
        return (out + local.view_as(out)).to(dtype)
