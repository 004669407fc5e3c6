"""CLEAR: softmax attention of a pretrained DiT restricted to a circular window around each image token.

For the joint sequence [text (T tokens); image (H×W tokens)] and window radius r (in latent tokens)::

    text query   → every text and image key
    image query  → every text key, the image keys with (y'−y)² + (x'−x)² < r², and (optionally) every pooled token

Softmax, its scale, RoPE and q/k norms are the model's own; only which keys a query sees changes. The pooled tokens
are f×f weighted sums of the image keys and values after RoPE, with one learnable f×f weight ``spatial_weight``
(initialised to 1/f², i.e. average pooling; CLEAR's parameter, so its published files load as they are). Grids
that f does not divide are pooled over their whole f×f blocks. ``proportional_attention`` sets the softmax scale to

    √(log(c·N) / log N_train / d)      N keys (text + image, before the pooled ones), d the head dim,

with c = 1, or c = 10 with pooled tokens (as CLEAR's pooled processor computes it), to keep the attention entropy
of the training length at other resolutions. It and ``train_tokens`` are inference options: they may be set when
loading published weights (CLEAR's high-resolution recipe does).

Cost is O(N·πr²) instead of O(N²); the grid is read per call, so any resolution and aspect ratio runs as is.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..kernels import local_attention
from .options import Option, flag, integer
from .processor import LinearizedProcessor

FLUX_TRAIN_TOKENS = 64 * 64 + 512  # 1024² images plus 512 T5 tokens
POOLED_LENGTH_FACTOR = 10  # c of proportional attention with pooled tokens (CLEAR's pooled processor)


class ClearAttnProcessor(LinearizedProcessor):
    method = "clear"
    option_specs = {"radius": integer(1, "an integer >= 1 (latent tokens)"),
                    "pool": Option("int", "0 (no pooled tokens) or a factor >= 2", minimum=2, also=(0,)),
                    "proportional_attention": flag(), "train_tokens": integer(2)}

    def __init__(self, dim: int, heads: int, radius: int = 16, pool: int = 0, proportional_attention: bool = False,
                 train_tokens: int = FLUX_TRAIN_TOKENS):
        super().__init__(dim, heads)
        if not isinstance(radius, int) or radius < 1:
            raise InvalidArgumentError(f"radius must be an integer >= 1 (latent tokens); got {radius!r}")
        if not isinstance(pool, int) or pool < 0 or pool == 1:
            raise InvalidArgumentError(f"pool must be 0 (no pooled tokens) or a factor >= 2; got {pool!r}")
        if not isinstance(train_tokens, int) or train_tokens < 2:
            raise InvalidArgumentError(f"train_tokens must be an integer >= 2; got {train_tokens!r}")
        self.radius, self.pool = radius, pool
        self.proportional_attention, self.train_tokens = bool(proportional_attention), train_tokens
        if pool:
            self.spatial_weight = nn.Parameter(torch.full((1, 1, 1, pool, 1, pool, 1), 1.0 / pool**2))

    def layer_config(self) -> dict:
        return {"radius": self.radius, "pool": self.pool, "proportional_attention": self.proportional_attention,
                "train_tokens": self.train_tokens}

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                *args, **kwargs):
        if attention_mask is not None:
            raise InvalidArgumentError("attention_mask is not supported by CLEAR local attention; call without one")
        if getattr(attn, "fused_projections", False):
            raise InvalidArgumentError("CLEAR needs separate q/k/v projections; call unfuse_qkv_projections() first")
        if type(attn).__name__ == "FluxAttention":
            return self._flux(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        return self._image_first(attn, hidden_states, encoder_hidden_states)

    # --- sequence layouts of the supported models -------------------------------------------------------------

    def _flux(self, attn, hidden_states, encoder_hidden_states, rotary):
        """FLUX: [text; image], RoPE over both; single-stream blocks get the joint sequence as hidden_states."""
        from diffusers.models.embeddings import apply_rotary_emb

        q, k, v = (self._heads(proj(hidden_states), attn.head_dim) for proj in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:
            eq, ek, ev = (self._heads(proj(encoder_hidden_states), attn.head_dim)
                          for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if rotary is not None:
            q = apply_rotary_emb(q, rotary, sequence_dim=1)
            k = apply_rotary_emb(k, rotary, sequence_dim=1)
        grid, text = self._grid(q.shape[1], encoder_hidden_states.shape[1] if joint else None)
        out = self.window_attention(q, k, v, text, grid).flatten(2).to(q.dtype)
        if not joint:
            return out
        text_out, image_out = out.split_with_sizes([text, out.shape[1] - text], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())

    def _image_first(self, attn, hidden_states, encoder_hidden_states):
        """SD3 joint attention ([image; text] in diffusers, reordered here), SD3.5 attn2 and PixArt attn1."""
        residual = hidden_states
        heads = attn.heads
        q, k, v = (self._heads(proj(hidden_states), None, heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        text = 0
        if encoder_hidden_states is not None:
            eq, ek, ev = (self._heads(proj(encoder_hidden_states), None, heads)
                          for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            text = eq.shape[1]
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        grid, _ = self._grid(q.shape[1], text)
        out = self.window_attention(q, k, v, text, grid).flatten(2).to(q.dtype)
        text_out, image_out = out[:, :text], out[:, text:]
        image_out = attn.to_out[1](attn.to_out[0](image_out))
        if encoder_hidden_states is None:
            if attn.residual_connection:
                image_out = image_out + residual
            return image_out / attn.rescale_output_factor
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return image_out, text_out

    # --- the attention itself ---------------------------------------------------------------------------------

    def window_attention(self, q, k, v, text: int, grid: tuple[int, int]) -> torch.Tensor:
        """q, k, v (B, T + H·W, heads, d) with the text first; returns the same layout."""
        scale = self.softmax_scale(q.shape[-1], k.shape[1])
        if not self.pool:
            return local_attention(q, k, v, grid=grid, radius=self.radius, num_global=text, scale=scale)
        pooled_k, pooled_v = self.pool_tokens(k[:, text:], grid), self.pool_tokens(v[:, text:], grid)
        count = pooled_k.shape[1]
        queries = torch.cat([q[:, :text], q.new_zeros(pooled_k.shape), q[:, text:]], 1)  # pooled rows: discarded
        keys = torch.cat([k[:, :text], pooled_k, k[:, text:]], 1)
        values = torch.cat([v[:, :text], pooled_v, v[:, text:]], 1)
        image_out = local_attention(queries, keys, values, grid=grid, radius=self.radius, num_global=text + count,
                                    scale=scale)[:, text + count:]
        if not text:
            return image_out
        text_out = F.scaled_dot_product_attention(  # text queries see text and image, not the pooled tokens
            q[:, :text].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale).transpose(1, 2)
        return torch.cat([text_out, image_out], 1)

    def pool_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Σ_{a,b<f} w_ab · x[f·i + a, f·j + b] for every whole f×f block (i, j) of the grid; (B, P, heads, d)."""
        factor = self.pool
        height, width = grid
        rows, cols = height // factor, width // factor
        if rows == 0 or cols == 0:
            raise InvalidArgumentError(f"pool={factor} is larger than the {height}×{width} token grid; use a smaller "
                                       "pool factor or a larger image")
        batch, _, heads, dim = tokens.shape
        image = tokens.view(batch, height, width, heads, dim)[:, : rows * factor, : cols * factor]
        blocks = image.reshape(batch, rows, factor, cols, factor, heads, dim)
        weight = self.spatial_weight.reshape(1, 1, factor, 1, factor, 1, 1).to(tokens.dtype)
        return (blocks * weight).sum(dim=(2, 4)).reshape(batch, rows * cols, heads, dim)

    def softmax_scale(self, head_dim: int, num_keys: int) -> float:
        """1/√d, or with proportional attention √(log(c·N) / log N_train / d) (see the module docstring)."""
        if not self.proportional_attention:
            return head_dim**-0.5
        factor = POOLED_LENGTH_FACTOR if self.pool else 1
        return math.sqrt(math.log(factor * num_keys) / math.log(self.train_tokens) / head_dim)

    def _grid(self, total: int, text: int | None) -> tuple[tuple[int, int], int]:
        grid_state = self.__dict__.get("_token_grid")
        if text is None:
            if grid_state is None:
                raise InvalidArgumentError("call the whole FLUX transformer: single-stream blocks need its img_ids")
            return grid_state.grid_with_prefix(total)
        return self.grid_for(total - text), text

    @staticmethod
    def _heads(x: torch.Tensor, head_dim: int | None, heads: int | None = None) -> torch.Tensor:
        return x.unflatten(-1, (-1, head_dim)) if head_dim else x.unflatten(-1, (heads, -1))
