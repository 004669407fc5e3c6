"""LinFusion's generalised linear attention as a diffusers attention processor (an nn.Module).

For a self-attention layer with input x (B, N, C) and the layer's own projections W_q, W_k, W_v, W_o::

    q = W_q (x + M_q(x)),   k = W_k (x + M_k(x)),   v = W_v x
    o = W_o · LinearAttention_φ(q, k, v)    with φ = ELU + 1, mean-form normaliser, eps = 1e-4

where M_q, M_k are residual mixers Linear(C→m) → LayerNorm(m) → LeakyReLU → Linear(m→C). The mixers live in the
processor; the projections stay on the diffusers ``Attention`` module, so their names (and LoRA keys) are unchanged.
"""

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..kernels import DEFAULT_EPS, FEATURE_MAPS, linear_attention
from .options import choice, integer, positive_float
from .processor import SelfAttentionProcessor


class ResidualMixer(nn.Sequential):
    """Linear(dim→mid) → LayerNorm(mid) → LeakyReLU → Linear(mid→dim); indices 0…3 as in LinFusion checkpoints."""

    def __init__(self, dim: int, mid_dim: int):
        super().__init__(
            nn.Linear(dim, mid_dim), nn.LayerNorm(mid_dim), nn.LeakyReLU(inplace=True), nn.Linear(mid_dim, dim)
        )

    def zero_output(self) -> None:
        """Make the mixer output 0 so that x + M(x) = x."""
        nn.init.zeros_(self[3].weight)
        nn.init.zeros_(self[3].bias)


class LinFusionAttnProcessor(SelfAttentionProcessor):
    """Normalised linear attention with residual query/key mixers (LinFusion)."""

    method = "linfusion"
    option_specs = {"mid_dim": integer(1, "a positive integer or None", optional=True),
                    "feature_map": choice(*FEATURE_MAPS), "eps": positive_float()}

    def __init__(
        self, dim: int, heads: int, mid_dim: int | None = None, feature_map: str = "elu1", eps: float = DEFAULT_EPS
    ):
        super().__init__(dim, heads)
        mid_dim = dim if mid_dim is None else mid_dim
        if mid_dim < 1:
            raise InvalidArgumentError(f"mid_dim must be >= 1; got {mid_dim}")
        self.mid_dim = mid_dim
        self.feature_map, self.eps = feature_map, eps
        self.to_q_ = ResidualMixer(dim, mid_dim)
        self.to_k_ = ResidualMixer(dim, mid_dim)

    def layer_config(self) -> dict:
        return {"feature_map": self.feature_map, "eps": self.eps}

    def initialize(self, attn) -> None:
        """Start as plain φ-linear attention over the layer's own projections (mixers output zero)."""
        self.to_q_.zero_output()
        self.to_k_.zero_output()

    def project_queries(self, attn, x: torch.Tensor) -> torch.Tensor:
        return self._heads(attn.to_q(self.to_q_(x).add_(x)))  # W_q (x + M_q(x)), one temporary less

    def project_keys(self, attn, context: torch.Tensor):
        key = attn.to_k(self.to_k_(context).add_(context))
        return self._heads(key), self._heads(attn.to_v(context))

    def chunk_form(self):
        return self.feature_map, self.eps

    def attend(self, q, k, v, x):
        return linear_attention(q, k, v, feature_map=self.feature_map, eps=self.eps, layout="bnhd")
