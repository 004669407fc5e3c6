"""SESR: super-resolution from collapsible linear blocks, trained expanded and run collapsed.

A linear block maps f channels to f' through a k×k convolution to p channels (p ≫ f, the expansion) and a 1×1
convolution back; with nothing between them it is one linear map, so it collapses analytically into a single k×k
convolution f→f'::

    W[o, i] = Σ_c W₂[o, c] · W₁[c, i]        (W₁: p×f×k×k, W₂: f'×p×1×1)
    b[o]    = Σ_c W₂[o, c] · b₁[c] + b₂[o]
    with a short residual (f = f'): W[i, i, k//2, k//2] += 1

The network (Bhardwaj et al., SESR-M<m>): a 5×5 block (C→f), m 3×3 blocks (f→f) with short residuals each followed
by a PReLU, a long residual from the first block's output, a 5×5 block (f→C·r²), a global residual that repeats the
input over the r² sub-pixel channels (nearest-neighbour upsampling after the shuffle), and PixelShuffle(r); ×4 uses
one r = 4 shuffle. Sizes: M3, M5, M11 (f = 16) and XL (m = 11, f = 32).

``collapse()`` returns the same network with every block as its single convolution: same outputs (within float
rounding), a fraction of the cost, what inference uses.
"""

import torch
from torch import nn

from ...errors import InvalidArgumentError

SESR_SIZES = {"m3": (3, 16), "m5": (5, 16), "m11": (11, 16), "xl": (11, 32)}  # name -> (blocks m, features f)
DEFAULT_EXPANSION = 256


class CollapsibleLinearBlock(nn.Module):
    """k×k conv (in→expansion) then 1×1 conv (expansion→out), optionally + x; or, collapsed, one k×k conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, expansion: int = DEFAULT_EXPANSION,
                 residual: bool = False):
        super().__init__()
        if residual and in_channels != out_channels:
            raise InvalidArgumentError("a residual linear block needs as many output channels as input channels")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.residual = residual
        self.expand = nn.Conv2d(in_channels, expansion, kernel_size, padding=kernel_size // 2)
        self.squeeze = nn.Conv2d(expansion, out_channels, 1)
        self.collapsed: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.collapsed is not None:
            return self.collapsed(x)
        out = self.squeeze(self.expand(x))
        return out + x if self.residual else out

    @torch.no_grad()
    def collapsed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the single k×k convolution equal to this block (see the module docstring)."""
        w1, b1 = self.expand.weight.double(), self.expand.bias.double()
        w2, b2 = self.squeeze.weight.double()[:, :, 0, 0], self.squeeze.bias.double()
        weight = torch.einsum("oc,cikl->oikl", w2, w1)
        bias = w2 @ b1 + b2
        if self.residual:
            centre = self.kernel_size // 2
            weight[:, :, centre, centre] += torch.eye(self.in_channels, dtype=weight.dtype)
        return weight.to(self.expand.weight.dtype), bias.to(self.expand.bias.dtype)

    def collapse(self) -> None:
        """Replace the two convolutions by their single equivalent (irreversible)."""
        weight, bias = self.collapsed_weights()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.kernel_size // 2)
        conv.to(weight.device, weight.dtype)
        conv.weight.data.copy_(weight)
        conv.bias.data.copy_(bias)
        del self.expand, self.squeeze
        self.collapsed = conv


class SESR(nn.Module):
    def __init__(self, size: str = "m5", scale: int = 2, channels: int = 3, expansion: int = DEFAULT_EXPANSION):
        super().__init__()
        if size not in SESR_SIZES:
            raise InvalidArgumentError(f"size must be one of {', '.join(SESR_SIZES)}; got {size!r}")
        if scale not in (2, 4):
            raise InvalidArgumentError(f"scale must be 2 or 4; got {scale!r}")
        blocks, features = SESR_SIZES[size]
        self.size, self.scale, self.channels = size, scale, channels
        self.first = CollapsibleLinearBlock(channels, features, 5, expansion)
        self.blocks = nn.ModuleList(CollapsibleLinearBlock(features, features, 3, expansion, residual=True)
                                    for _ in range(blocks))
        self.activations = nn.ModuleList(nn.PReLU(features) for _ in range(blocks))
        self.last = CollapsibleLinearBlock(features, channels * scale**2, 5, expansion)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.first(x)
        hidden = head
        for block, activation in zip(self.blocks, self.activations, strict=True):
            hidden = activation(block(hidden))
        out = self.last(hidden + head) + x.repeat_interleave(self.scale**2, dim=1)
        return self.shuffle(out)

    def collapse(self) -> "SESR":
        """Collapse every linear block in place (inference form); returns self."""
        for module in self.modules():
            if isinstance(module, CollapsibleLinearBlock) and module.collapsed is None:
                module.collapse()
        return self

