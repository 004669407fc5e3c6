"""InLine: injective linear attention (identity kernel, subtractive normalisation) plus a dynamic local convolution.

Per head, with scale s = d^-1/2 and k̄ = (1/N) Σ_j k_j, v̄ = (1/N) Σ_j v_j, the attention weights are::

    w_ij = (s/N) (q_i·k_j − q_i·k̄) + 1/N          (each row sums to 1; weights may be negative)
    O_i  = Σ_j w_ij v_j = (s/N) q_iᵀ (Kᵀ V) + (1 − s q_i·k̄) v̄

computed in O(N·d²) without a denominator. The local term is a depth-wise k×k convolution of V (all C channels, on
the token grid) whose kernel is predicted per sample from the mean token x̄ = (1/N) Σ_i x_i of the layer input::

    kernel = Linear_{C→k²C}(GELU(Linear_{C→C}(x̄)))   reshaped to (C, k, k);   O ← O + DWConv_kernel(V)

``initialize`` zeroes the last Linear, so the predicted kernel (and the local term) starts at 0 and a converted
layer starts as plain injective linear attention over the teacher's projections. InLine predicts the kernel with
grouped 1×1 convolutions; here they are dense Linear layers (k²C² + C² weights per layer).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError
from ..options import odd_integer
from ..processor import SelfAttentionProcessor


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in x's dtype, whatever the dtype of the layer's parameters."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


class InLineAttnProcessor(SelfAttentionProcessor):
    """Injective linear attention + a per-sample dynamic depth-wise convolution of V (InLine)."""

    method = "inline"
    option_specs = {"kernel_size": odd_integer()}

    def __init__(self, dim: int, heads: int, kernel_size: int = 3):
        super().__init__(dim, heads)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidArgumentError(f"kernel_size must be an odd integer >= 1; got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.kernel_predictor = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, kernel_size**2 * dim))

    def layer_config(self) -> dict:
        return {"kernel_size": self.kernel_size}

    def initialize(self, attn) -> None:
        nn.init.zeros_(self.kernel_predictor[2].weight)
        nn.init.zeros_(self.kernel_predictor[2].bias)

    def attend(self, q, k, v, x):
        acc = torch.promote_types(q.dtype, torch.float32)
        q, k, v, dtype = q.to(acc), k.to(acc), v.to(acc), q.dtype
        count, scale = k.shape[1], self.head_dim**-0.5
        state = torch.einsum("bnhk,bnhv->bhkv", k, v) / count  # (1/N) KᵀV per head
        key_mean, value_mean = k.mean(dim=1), v.mean(dim=1)  # (B, heads, d)
        out = torch.einsum("bnhk,bhkv->bnhv", q, state).mul_(scale)
        keep = 1.0 - scale * torch.einsum("bnhk,bhk->bnh", q, key_mean)
        out += keep.unsqueeze(-1) * value_mean.unsqueeze(1)
        return (out + self.local(v, x.to(acc))).to(dtype)

    def local(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """DWConv of V with a k×k kernel per (sample, channel) predicted from the sample's mean token."""
        batch, count, heads, head_dim = v.shape
        size = self.kernel_size
        hidden = F.gelu(_linear(self.kernel_predictor[0], x.mean(dim=1)))
        kernels = _linear(self.kernel_predictor[2], hidden).view(batch * self.dim, 1, size, size)
        height, width = self.grid_for(count)
        image = v.reshape(batch, count, self.dim).transpose(1, 2).reshape(1, batch * self.dim, height, width)
        out = F.conv2d(image, kernels, padding=size // 2, groups=batch * self.dim)  # one group per (sample, channel)
        return out.view(batch, self.dim, count).transpose(1, 2).reshape(batch, count, heads, head_dim)
