"""Depth-wise convolution over image tokens: the local term of SLAB, LiT, RALA (LePE), NaLaFormer and L²ViT."""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError


class TokenDepthwiseConv(nn.Module):
    """y = DWConv_{k×k}(x) on tokens (B, N, C) laid out on an (H, W) grid in raster order, zero padding.

    ``zero_init()`` makes it output 0, so that adding it to a converted layer leaves the layer as it was.
    """

    def __init__(self, channels: int, kernel_size: int = 5, bias: bool = True):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidArgumentError(f"kernel_size must be an odd integer >= 1; got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def zero_init(self) -> None:
        nn.init.zeros_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, count, channels = tokens.shape
        height, width = grid
        if height * width != count:
            raise InvalidArgumentError(f"grid {grid} holds {height * width} tokens, not {count}")
        image = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        out = F.conv2d(image.to(self.conv.weight.dtype), self.conv.weight, self.conv.bias,
                       padding=self.kernel_size // 2, groups=channels)
        return out.flatten(2).transpose(1, 2).to(tokens.dtype)
