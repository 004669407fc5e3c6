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
from ..kernels import DEFAULT_EPS, linear_attention


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


class LinFusionAttnProcessor(nn.Module):
    """Normalised linear attention with residual query/key mixers (LinFusion)."""

    method = "linfusion"

    def __init__(
        self, dim: int, heads: int, mid_dim: int | None = None, feature_map: str = "elu1", eps: float = DEFAULT_EPS
    ):
        super().__init__()
        mid_dim = dim if mid_dim is None else mid_dim
        if dim % heads:
            raise InvalidArgumentError(f"dim ({dim}) must be a multiple of heads ({heads})")
        if mid_dim < 1:
            raise InvalidArgumentError(f"mid_dim must be >= 1; got {mid_dim}")
        self.dim, self.heads, self.mid_dim = dim, heads, mid_dim
        self.feature_map, self.eps = feature_map, eps
        self.to_q_ = ResidualMixer(dim, mid_dim)
        self.to_k_ = ResidualMixer(dim, mid_dim)

    def layer_config(self) -> dict:
        return {"dim": self.dim, "heads": self.heads, "mid_dim": self.mid_dim, "feature_map": self.feature_map,
                "eps": self.eps}

    def zero_mixers(self) -> None:
        """Start as plain φ-linear attention over the layer's own projections."""
        self.to_q_.zero_output()
        self.to_k_.zero_output()

    def forward(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise InvalidArgumentError(
                "attention_mask is not supported by linear self-attention (LinFusion); call without a mask"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        batch = hidden_states.shape[0]
        query = attn.to_q(self.to_q_(hidden_states).add_(hidden_states))  # W_q (x + M_q(x)), one temporary less
        key = attn.to_k(self.to_k_(context).add_(context))
        value = attn.to_v(context)
        query = query.view(batch, -1, attn.heads, query.shape[-1] // attn.heads)
        key = key.view(batch, -1, attn.heads, key.shape[-1] // attn.heads)
        value = value.view(batch, -1, attn.heads, value.shape[-1] // attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = linear_attention(query, key, value, feature_map=self.feature_map, eps=self.eps, layout="bnhd")
        del query, key, value  # free them before the output projection allocates
        out = attn.to_out[1](attn.to_out[0](out.flatten(2)))

        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
