"""CNN-SVM: a small convolutional network whose last layer is a linear SVM, trained end to end with the squared
hinge loss (Tang, 2013) instead of softmax cross-entropy.

One-vs-rest L2-SVM over K classes, scores s = W·φ(x) + b, targets t_k = +1 for the true class and −1 otherwise:

    L = mean over the batch of  Σ_k max(0, 1 − t_k·s_k)²  +  (1 / (2·C·N)) ‖W‖²

The features φ are ReLU convolutions, each halving the resolution, and global average pooling (no max-pooling), so the
whole network is piecewise linear and LinearScope can replay it exactly.
"""

import torch
from torch import nn

DEFAULT_CHANNELS = (32, 64, 128, 128)


def squared_hinge_loss(scores: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                       c: float = 10.0) -> torch.Tensor:
    """One-vs-rest L2-SVM loss (see the module docstring); ``weight`` is the SVM's W for the margin term."""
    targets = -torch.ones_like(scores)
    targets.scatter_(1, labels[:, None], 1.0)
    loss = torch.clamp(1 - targets * scores, min=0).pow(2).sum(dim=1).mean()
    if weight is not None:
        loss = loss + weight.pow(2).sum() / (2 * c * scores.shape[0])
    return loss


class CNNSVM(nn.Module):
    def __init__(self, num_classes: int, channels: tuple[int, ...] = DEFAULT_CHANNELS, in_channels: int = 3):
        super().__init__()
        layers, previous = [], in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.ReLU()]
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
