"""Off-the-shelf CNN features with a linear SVM on top.

The features come from a convolutional encoder that is already trained and is not trained further: the encoder of the
bundled teacher's VAE (any diffusers AutoencoderKL works). For each of its stages (every down block, then the mid
block) the channel means and standard deviations over space are concatenated:

    φ(x) = [mean_hw(A₁), std_hw(A₁), …, mean_hw(A_L), std_hw(A_L)]       standardised with training-set μ, σ

and a linear one-vs-rest SVM (squared hinge loss, see :mod:`.cnn_svm`) is fitted on φ.
"""

import torch
from torch import nn

from .cnn_svm import squared_hinge_loss


class VAEFeatures(nn.Module):
    """Frozen AutoencoderKL encoder → pooled statistics of every stage."""

    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder.eval().requires_grad_(False)
        widths = [block.resnets[-1].out_channels for block in self.encoder.down_blocks]
        self.dim = 2 * (sum(widths) + widths[-1])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1], (B, 3, H, W) → (B, dim)."""
        hidden = self.encoder.conv_in(x * 2 - 1)
        stats = []
        for block in self.encoder.down_blocks:
            hidden = block(hidden)
            stats.append(hidden)
        stats.append(self.encoder.mid_block(hidden))
        return torch.cat([torch.cat([a.mean(dim=(2, 3)), a.std(dim=(2, 3))], dim=1) for a in stats], dim=1)


class FeatureSVM(nn.Module):
    """Standardisation (fixed after fitting) and a linear SVM over the frozen features."""

    def __init__(self, features: VAEFeatures, num_classes: int):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.zeros(features.dim))
        self.register_buffer("scale", torch.ones(features.dim))
        self.svm = nn.Linear(features.dim, num_classes)
        self.feature_dim = features.dim

    def set_standardisation(self, raw: torch.Tensor) -> None:
        self.mean.copy_(raw.mean(dim=0))
        self.scale.copy_(raw.std(dim=0).clamp_min(1e-6))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.svm(self.embed(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head_loss(self.embed(x), labels)

    def head_loss(self, embedded: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The SVM's loss on standardised features (training caches them: the encoder is frozen)."""
        return squared_hinge_loss(self.svm(embedded), labels, self.svm.weight)

    def trainable_state(self) -> dict:
        """What is saved: the standardisation and the SVM (the encoder is the teacher VAE's own)."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("features.")}
