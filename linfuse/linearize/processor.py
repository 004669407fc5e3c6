"""Base classes of linfuse attention processors (nn.Modules installed with ``Attention.set_processor``).

The diffusers ``Attention`` module keeps its projections (``to_q``, ``to_k``, ``to_v``, ``to_out``), so their names
and LoRA keys do not change; a processor holds only what its method adds, and says whether distillation should also
train the layer's projections (``trains_projections``).
"""

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .grid import TokenGrid


class LinearizedProcessor(nn.Module):
    """What :func:`linearize` needs of a processor: a method name, a config, an initialisation and a token grid."""

    method = ""
    trains_projections = True
    option_specs: dict = {}  # keyword of __init__ beyond (dim, heads) -> linfuse.linearize.options.Option

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if not isinstance(heads, int) or heads < 1 or dim % heads:
            raise InvalidArgumentError(f"heads must be a positive divisor of the layer width {dim}; got {heads!r}")
        self.dim, self.heads = dim, heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def layer_config(self) -> dict:
        """Options beyond (dim, heads) that rebuild this processor; saved with its weights."""
        return {}

    def initialize(self, attn) -> None:
        """Called when a layer is converted without weights: start as close to the teacher as the method allows."""

    def grid_for(self, num_tokens: int) -> tuple[int, int]:
        grid = self.__dict__.get("_token_grid")
        return (grid or TokenGrid()).grid_for(num_tokens)


class SelfAttentionProcessor(LinearizedProcessor):
    """Self-attention over a diffusers ``Attention``: project, :meth:`attend`, output projection.

    Handles what ``AttnProcessor2_0`` handles (spatial and group norms, 4-D inputs, q/k norms, residual connection,
    output rescaling). Subclasses implement ``attend(q, k, v, x)`` with q, k, v of shape (B, N, heads, d) and the
    normalised layer input x (B, N, C); they may override :meth:`project`.
    """

    # A processor whose attention is a normalised linear attention over token-wise projections may also be run in
    # parts of the token sequence (the lean memory mode of linfuse.pipelines.lean): the keys of every part are
    # summed into one state (linfuse.kernels.linear_attention_state), then each part of the queries reads it out.
    # ``chunk_form`` names that attention, (feature map, eps), or None when the method cannot be split so;
    # ``local_rows`` is how many token-grid rows above and below a part its local term (``local_term``) reads.
    local_rows = 0

    def chunk_form(self) -> tuple[str, float] | None:
        return None

    def local_term(self, v: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """The method's per-token addition computed from the values (B, N, heads, d) on ``grid``; None if none."""
        return None

    def project(self, attn, x: torch.Tensor, context: torch.Tensor):
        return (self.project_queries(attn, x), *self.project_keys(attn, context))

    def project_queries(self, attn, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(attn.to_q(x))
        return q if attn.norm_q is None else attn.norm_q(q)

    def project_keys(self, attn, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._heads(attn.to_k(context))
        return (k if attn.norm_k is None else attn.norm_k(k)), self._heads(attn.to_v(context))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1, self.heads, t.shape[-1] // self.heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if attention_mask is not None:
            raise InvalidArgumentError(
                f"attention_mask is not supported by {self.method} self-attention; call without a mask"
            )
        if encoder_hidden_states is not None:
            raise InvalidArgumentError(f"{self.method} converts self-attention only; this call passed a context")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        q, k, v = self.project(attn, hidden_states, hidden_states)
        out = self.attend(q, k, v, hidden_states)
        del q, k, v  # free them before the output projection allocates
        out = attn.to_out[1](attn.to_out[0](out.flatten(2).to(hidden_states.dtype)))

        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
