"""SLAB's simplified linear attention: ReLU linear attention plus a depth-wise convolution of V shared by the heads.

Per head h, with φ = ReLU, the normaliser of :mod:`.sana` (ε on the mean form) and V_h the head's values laid out
on the (H, W) token grid::

    O_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + ε·N)  +  DWConv_{k×k}(V_h)_i

The k×k depth-wise convolution runs over the head_dim channels and its weights are the same for every head (applied
per batch·head), as in SLAB. ``initialize`` zeroes it, so a converted layer starts as plain ReLU linear attention.
SLAB also adds a learnable positional encoding to K; its size is tied to one token grid, so it is left out here
(the convolution already supplies position, at any resolution).
"""

from ...kernels import DEFAULT_EPS, linear_attention
from ..options import odd_integer, positive_float
from ..processor import SelfAttentionProcessor
from ..token_conv import TokenDepthwiseConv
from .sana import positive_number


class SlabAttnProcessor(SelfAttentionProcessor):
    """ReLU linear attention + a head-shared k×k depth-wise convolution of V (SLAB)."""

    method = "slab"
    option_specs = {"kernel_size": odd_integer(), "eps": positive_float()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 5, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.value_conv = TokenDepthwiseConv(self.head_dim, kernel_size)
        self.kernel_size, self.eps = kernel_size, positive_number("eps", eps)

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "eps": self.eps}

    def initialize(self, attn) -> None:
        self.value_conv.zero_init()

    @property
    def local_rows(self) -> int:
        return self.kernel_size // 2

    def chunk_form(self):
        return "relu", self.eps

    def local_term(self, v, grid):
        """DWConv_{k×k}(V_h) per head, in v's dtype (no fp32 copy of V; the convolution accumulates in fp32 on
        GPUs): (B, N, heads, d)."""
        batch, count, heads, head_dim = v.shape
        per_head = v.transpose(1, 2)
        local = self.value_conv(per_head.reshape(batch * heads, count, head_dim), grid)  # (B·heads, N, d)
        return local.view(batch, heads, count, head_dim).transpose(1, 2)

    def attend(self, q, k, v, x):
        """q, k, v in their own (half) precision: the kernels keep the state in fp32, chunk by chunk."""
        out = linear_attention(q, k, v, feature_map="relu", eps=self.eps, layout="bnhd")
        return out + self.local_term(v, self.grid_for(v.shape[1])).to(out.dtype)
