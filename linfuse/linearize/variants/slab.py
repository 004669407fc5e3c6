"""SLAB's simplified linear attention: ReLU linear attention plus a depth-wise convolution of V shared by the heads.

Per head h, with φ = ReLU, the normaliser of :mod:`.sana` (ε on the mean form) and V_h the head's values laid out
on the (H, W) token grid::

    O_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + ε·N)  +  DWConv_{k×k}(V_h)_i

The k×k depth-wise convolution runs over the head_dim channels and its weights are the same for every head (applied
per batch·head), as in SLAB. ``initialize`` zeroes it, so a converted layer starts as plain ReLU linear attention.
SLAB also adds a learnable positional encoding to K; its size is tied to one token grid, so it is left out here
(the convolution already supplies position, at any resolution).
"""

import torch

from ...kernels import DEFAULT_EPS, linear_attention
from ..processor import SelfAttentionProcessor
from ..token_conv import TokenDepthwiseConv
from .sana import positive_number


class SlabAttnProcessor(SelfAttentionProcessor):
    """ReLU linear attention + a head-shared k×k depth-wise convolution of V (SLAB)."""

    method = "slab"

    def __init__(self, dim: int, heads: int, kernel_size: int = 5, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.value_conv = TokenDepthwiseConv(self.head_dim, kernel_size)
        self.kernel_size, self.eps = kernel_size, positive_number("eps", eps)

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "eps": self.eps}

    def initialize(self, attn) -> None:
        self.value_conv.zero_init()

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        q, k, v, dtype = q.to(acc), k.to(acc), v.to(acc), q.dtype
        out = linear_attention(q, k, v, feature_map="relu", eps=self.eps, layout="bnhd")
        batch, count, heads, head_dim = v.shape
        per_head = v.transpose(1, 2).reshape(batch * heads, count, head_dim)  # (B·heads, N, d)
        local = self.value_conv(per_head, self.grid_for(count))
        return (out + local.view(batch, heads, count, head_dim).transpose(1, 2)).to(dtype)
