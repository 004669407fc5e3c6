"""CNN-SVM: a small convolutional network whose last layer is a linear SVM, trained end to end with the squared
hinge loss (Tang, 2013) instead of softmax cross-entropy.

Multi-class L2-SVM over K classes (Weston–Watkins form), scores s = W·φ(x) + b, true class y:

    L = mean over the batch of  Σ_{k≠y} max(0, 1 − (s_y − s_k))²  +  (1 / (2·C·N)) ‖W‖²

Tang's one-vs-rest form, Σ_k max(0, 1 − t_k·s_k)² with t = ±1, has a trap with many classes: scoring every class
−1 costs only 4 per sample, and with 144 classes training here settled there (1 % accuracy); the pairwise margins
above have no such all-negative optimum.

The features φ are convolutions (BatchNorm, ReLU), each halving the resolution, and global average pooling (no
max-pooling), so the whole network is piecewise linear and LinearScope can replay it exactly.
"""

import torch
from torch import nn

DEFAULT_CHANNELS = (32, 64, 128, 128)


def squared_hinge_loss(scores: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                       c: float = 10.0) -> torch.Tensor:
    """Multi-class L2-SVM loss (see the module docstring); ``weight`` is the SVM's W for the margin term."""
    true = scores.gather(1, labels[:, None])
    violations = torch.clamp(1 - (true - scores), min=0).pow(2)
    loss = (violations.sum(dim=1) - 1).mean()  # the k = y term is max(0, 1 − 0)² = 1 for every sample
    if weight is not None:
        loss = loss + weight.pow(2).sum() / (2 * c * scores.shape[0])
    return loss


class CNNSVM(nn.Module):
    def __init__(self, num_classes: int, channels: tuple[int, ...] = DEFAULT_CHANNELS, in_channels: int = 3):
        super().__init__()
        layers, previous = [], in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.svm = nn.Linear(previous, num_classes)
        self.feature_dim = previous

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): the pooled features the SVM reads, (B, feature_dim)."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.svm(self.embed(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return squared_hinge_loss(self(x), labels, self.svm.weight)
