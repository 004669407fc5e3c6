"""LiT: a DiT's self-attention as ReLU linear attention plus a depth-wise convolution, with fewer heads.

Per head, with φ = ReLU and the layer's (re-initialised) projections::

    O_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + ε)  +  DWConv_{k×k}(V)_i

LiT's weight inheritance loads every pretrained weight of the DiT *except* the attention's: q/k/v/out are drawn
afresh (Xavier-uniform, zero bias), because ReLU-kernel queries and keys live in another space than softmax ones.
The originals are kept on the CPU for ``unlinearize``. Fewer, wider heads cost little with linear attention (the
per-head state is d×d) and LiT found them better; the default is a quarter of the layer's heads.
"""

import torch
from torch import nn

from ..kernels import DEFAULT_EPS, linear_attention
from .options import odd_integer, positive_float
from .processor import SelfAttentionProcessor
from .token_conv import TokenDepthwiseConv


class LiTAttnProcessor(SelfAttentionProcessor):
    method = "lit"
    changes_projections = True  # initialize() draws new attention weights
    option_specs = {"kernel_size": odd_integer(), "eps": positive_float()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 5, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.kernel_size, self.eps = kernel_size, eps
        self.value_conv = TokenDepthwiseConv(dim, kernel_size)

    @staticmethod
    def default_heads(layer_heads: int, dim: int) -> int:
        heads = max(1, layer_heads // 4)
        while dim % heads:
            heads -= 1
        return heads

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "eps": self.eps}

    def initialize(self, attn) -> None:
        with torch.no_grad():
            for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
                nn.init.xavier_uniform_(linear.weight)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def attend(self, q, k, v, x):
        out = linear_attention(q, k, v, feature_map="relu", eps=self.eps, layout="bnhd")
        values = v.flatten(2)
        local = self.value_conv(values, self.grid_for(values.shape[1]))
        return out + local.view_as(out)
