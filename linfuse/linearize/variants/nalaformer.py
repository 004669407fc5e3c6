"""NaLaFormer: norm-aware linear attention, whose query features sharpen with the query norm, plus a LePE.

Per head, with ‖q_i‖ the L2 norm of the head's query, p_i = 3 (0.5 + tanh ‖q_i‖) ∈ [1.5, 4.5) and 2d features::

    φ(q_i) = [ (ReLU(q_i) / ‖q_i‖)^p_i ,  (ReLU(−q_i) / ‖q_i‖)^p_i ]
    φ(k_j) = [ ReLU(k_j)³ ,  ReLU(−k_j)³ ]
    O_i    = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + ε·N)  +  DWConv_{k×k}(V)_i

Only same-sign components of q and k meet, so every product is ≥ 0 and the normaliser is positive. A zero query
(‖q_i‖ = 0) has zero features, and O_i is its LePE term alone. The k×k depth-wise convolution runs over all C
channels of V on the token grid; ``initialize`` zeroes it. NaLaFormer's RoPE on the numerator features and its
LayerNorm and SiLU gate after the attention are left out: the converted layer keeps the teacher's output path.
"""

import torch
import torch.nn.functional as F

from ...kernels import DEFAULT_EPS, linear_attention
from ..options import odd_integer, positive_float
from ..processor import SelfAttentionProcessor
from ..token_conv import TokenDepthwiseConv
from .sana import positive_number


def norm_aware_features(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ(q), φ(k)), each (…, 2d), from q, k (…, d); the norm is over the last dimension."""
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    power = 3.0 * (0.5 + torch.tanh(norm))
    direction = q / norm.clamp_min(torch.finfo(q.dtype).tiny)  # q = 0 stays 0
    phi_q = torch.cat([F.relu(direction), F.relu(-direction)], dim=-1).pow(power)
    phi_k = torch.cat([F.relu(k), F.relu(-k)], dim=-1).pow(3)
    return phi_q, phi_k


class NaLaFormerAttnProcessor(SelfAttentionProcessor):
    """Norm-aware power features (2d per head) in normalised linear attention + a k×k LePE on V (NaLaFormer)."""

    method = "nalaformer"
    option_specs = {"kernel_size": odd_integer(), "eps": positive_float()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 5, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.lepe = TokenDepthwiseConv(dim, kernel_size)
        self.kernel_size, self.eps = kernel_size, positive_number("eps", eps)

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "eps": self.eps}

    def initialize(self, attn) -> None:
        self.lepe.zero_init()

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        dtype, v = q.dtype, v.to(acc)
        phi_q, phi_k = norm_aware_features(q.to(acc), k.to(acc))
        out = linear_attention(phi_q, phi_k, v, feature_map="identity", eps=self.eps, layout="bnhd")
        local = self.lepe(v.flatten(2), self.grid_for(v.shape[1]))
        return (out + local.view_as(out)).to(dtype)
