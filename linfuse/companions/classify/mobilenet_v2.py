"""MobileNetV2 (Sandler et al., 2018): inverted residual blocks with linear bottlenecks.

Each block widens the input t× with a 1×1 convolution (BatchNorm, ReLU6), filters it with a depth-wise 3×3
convolution (BatchNorm, ReLU6) and projects it back with a 1×1 convolution followed by BatchNorm only: no activation
on the narrow bottleneck, where a ReLU would destroy information. When the stride is 1 and the widths match, the
block's input is added to its output.

The stage table (t expansion, c channels, n blocks, s stride) is the paper's; ``width`` scales every c. For the
64×64 emoji domain the stem keeps stride 2, so the last feature map is 2×2.
"""

import torch
from torch import nn

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU6()] if activation else layers


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = _conv_bn(in_channels, hidden, 1) if expansion != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, out_channels, 1, activation=False)  # the linear bottleneck
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, width: float = 0.5, last_channels: int = 640, dropout: float = 0.2):
        super().__init__()
        previous = _divisible(32 * width)
        layers = _conv_bn(3, previous, 3, stride=2)
        for expansion, channels, repeats, stride in STAGES:
            out = _divisible(channels * width)
            for index in range(repeats):
                layers.append(InvertedResidual(previous, out, stride if index == 0 else 1, expansion))
                previous = out
        layers += _conv_bn(previous, last_channels, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        self.feature_dim = last_channels

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self(x), labels, label_smoothing=0.1)
