"""GroupNorm over an activation held in parts, its statistics accumulated band by band.

For G groups of C/G channels (across the parts, as over their concatenation), with n = (C/G)·H·W values per group::

    μ_g = (1/n) Σ x,    σ²_g = (1/n) Σ (x − μ_g)²,    y = (x − μ_g) / √(σ²_g + ε) · γ_c + β_c

Both sums run over row bands in two passes (first the mean, then the centred squares; float64 totals of float32
band sums), so no normalised copy of the whole activation exists: :func:`norm_act` applies y (and the activation
that follows) to one band at a time, as the convolution or projection that consumes it reads that band.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .parts import Parts, rows_per_band, spans


@dataclass
class GroupStats:
    scale: torch.Tensor  # (C,) float32: γ_c / √(σ²_g + ε)
    shift: torch.Tensor  # (C,) float32: β_c − μ_g · scale_c


def group_stats(x: Parts, norm: nn.GroupNorm, band_elements: int) -> GroupStats:
    channels, groups = x.channels, norm.num_groups
    step = rows_per_band(channels * x.width, band_elements)
    meta = x.first.is_meta
    count = channels // groups * x.height * x.width

    def per_group(values: torch.Tensor) -> torch.Tensor:
        return values.view(groups, channels // groups).sum(1)

    total = torch.zeros(groups, dtype=torch.float64, device=x.first.device)
    for top, bottom in spans(x.height, step, meta):
        total += per_group(x.rows(top, bottom).float().sum(dim=(0, 2, 3)).double())
    mean = (total / count).float().repeat_interleave(channels // groups)
    squares = torch.zeros(groups, dtype=torch.float64, device=x.first.device)
    for top, bottom in spans(x.height, step, meta):
        centred = torch.sub(x.rows(top, bottom).float(), mean.view(1, -1, 1, 1))  # a copy, never x itself
        squares += per_group(centred.square_().sum(dim=(0, 2, 3)).double())
    variance = (squares / count).float().repeat_interleave(channels // groups)
    return _affine(mean, variance, norm)


def streamed_group_stats(bands, norm: nn.GroupNorm, channels: int, device) -> GroupStats:
    """The statistics of an activation that is never stored: ``bands`` yields its row bands (1, C, r, W) once each.

    Per group, each band's count n_b, mean m_b and M2_b = Σ (x − m_b)² (float32 within the band) are merged into
    the running (n, m, M2) in float64 (Chan, Golub and LeVeque)::

        δ = m_b − m,   m ← m + δ·n_b/(n + n_b),   M2 ← M2 + M2_b + δ²·n·n_b/(n + n_b),   n ← n + n_b
    """
    groups = norm.num_groups
    count = 0
    mean = torch.zeros(groups, dtype=torch.float64, device=device)
    m2 = torch.zeros(groups, dtype=torch.float64, device=device)
    for band in bands:
        values = band.float().reshape(groups, -1)  # (1, C, r, W): group g is channels [g·C/G, (g+1)·C/G)
        band_count = values.shape[1]
        band_mean = values.mean(dim=1)
        band_m2 = torch.sub(values, band_mean[:, None]).square_().sum(dim=1)
        delta = band_mean.double() - mean
        total = count + band_count
        mean = mean + delta * (band_count / total)
        m2 = m2 + band_m2.double() + delta.square() * (count * band_count / total)
        count = total
    per_group = channels // groups
    return _affine(mean.float().repeat_interleave(per_group), (m2 / count).float().repeat_interleave(per_group), norm)


def _affine(mean: torch.Tensor, variance: torch.Tensor, norm: nn.GroupNorm) -> GroupStats:
    """Per-channel scale and shift of GroupNorm from per-channel mean and variance."""
    scale = torch.rsqrt(variance + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.float()
    shift = -mean * scale
    if norm.affine:
        shift = shift + norm.bias.float()
    return GroupStats(scale, shift)


def norm_act(stats: GroupStats, activation: nn.Module | None = None):
    """A band → act(GroupNorm(band)) function with these statistics (the activation in place)."""

    def apply(band: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        out = torch.addcmul(stats.shift.view(shape), band.float(), stats.scale.view(shape)).to(band.dtype)
        return activate_(out, activation)

    return apply


def activate_(x: torch.Tensor, activation: nn.Module | None) -> torch.Tensor:
    """``activation(x)``, in place for the activations that allow it (SiLU, ReLU, Mish)."""
    if activation is None:
        return x
    if isinstance(activation, nn.SiLU):
        return F.silu(x, inplace=True)
    if isinstance(activation, (nn.ReLU, nn.Mish)):
        return type(activation)(inplace=True)(x)
    return activation(x)
