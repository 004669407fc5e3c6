"""ESPCN: convolutions at the low resolution, then one sub-pixel shuffle to ×r.

    x (C, H, W) → conv5×5 (C→64) → tanh → conv3×3 (64→32) → tanh → conv3×3 (32→C·r²) → PixelShuffle(r) → (C, rH, rW)

All the work happens at the input resolution; the last layer predicts the r² sub-pixel phases of every output pixel
as channels, which PixelShuffle rearranges into space.
"""

from torch import nn

from ...errors import InvalidArgumentError


class ESPCN(nn.Module):
    def __init__(self, scale: int = 2, channels: int = 3, features: tuple[int, int] = (64, 32)):
        super().__init__()
        if scale not in (2, 3, 4):
            raise InvalidArgumentError(f"scale must be 2, 3 or 4; got {scale!r}")
        self.scale, self.channels = scale, channels
        first, second = features
        self.body = nn.Sequential(
            nn.Conv2d(channels, first, 5, padding=2), nn.Tanh(),
            nn.Conv2d(first, second, 3, padding=1), nn.Tanh(),
            nn.Conv2d(second, channels * scale**2, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.body(x))
