"""Sana: ReLU linear attention with a normaliser, over the layer's own projections (no new parameters).

Per head, with φ = ReLU, N tokens and S̄ = (1/N) Σ_j φ(k_j) v_jᵀ, z̄ = (1/N) Σ_j φ(k_j)::

    O_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + ε·N)  =  φ(q_i)ᵀ S̄ / (φ(q_i)ᵀ z̄ + ε)

ε sits on the *mean*-form normaliser (default 1e-4), so it does not depend on the resolution. Sana adds 1e-15 to
the sum-form normaliser; ``eps=1e-15 / N`` reproduces it at N tokens. ε > 0 also keeps a query with φ(q_i) = 0
(every entry negative) at O_i = 0 instead of 0/0.
"""

import math

from ...errors import InvalidArgumentError
from ...kernels import DEFAULT_EPS, linear_attention
from ..options import positive_float
from ..processor import SelfAttentionProcessor


def positive_number(name: str, value) -> float:
    """``value`` as a float if it is a finite number > 0; an InvalidArgumentError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


class SanaAttnProcessor(SelfAttentionProcessor):
    """φ = ReLU normalised linear attention (Sana's self-attention)."""

    method = "sana"
    option_specs = {"eps": positive_float()}

    def __init__(self, dim: int, heads: int, eps: float = DEFAULT_EPS):
        super().__init__(dim, heads)
        self.eps = positive_number("eps", eps)

    def layer_config(self) -> dict:
        return {"eps": self.eps}

    def chunk_form(self):
        return "relu", self.eps

    def attend(self, q, k, v, x):
        return linear_attention(q, k, v, feature_map="relu", eps=self.eps, layout="bnhd")
