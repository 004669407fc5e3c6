"""Convolutions computed in bands of output rows, each band from its input rows plus a halo.

A k×k convolution with stride s and padding p maps output rows [o₀, o₁) to input rows [o₀·s − p, (o₁−1)·s − p + k):
the band's own rows and a halo of the neighbouring ones (the same arithmetic as ``patch_parallel``'s bands, run one
after another on one device). Rows outside the image are zero, as the convolution's padding; the band is then
convolved with no vertical padding and stored. What runs before the convolution (GroupNorm + activation, or
nearest ×2 up-sampling) is applied to the band only, so neither the normalised nor the up-sampled activation exists
whole; what follows it (a shortcut added) is applied to the output band.

``in_place=True`` (stride 1, as many output as input channels) writes each output band over its own input rows:
the last ``padding`` input rows of a band are kept aside before they are overwritten, as the halo the next band
reads, so the convolution needs no output tensor of its own.
"""

import struct

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError
from .parts import Parts, pad_rows, rows_per_band, spans


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def nearest_rows(top: int, bottom: int, source: int, target: int, device=None) -> torch.Tensor:
    """Source row of each target row [top, bottom) in nearest up-sampling from ``source`` to ``target`` rows, as
    PyTorch computes it (exactly half for ×2, else ⌊i · source/target⌋ in float32), built on ``device``."""
    index = torch.arange(top, bottom, device=device)
    if target == 2 * source:
        return index // 2
    scale = struct.unpack("f", struct.pack("f", source / target))[0]  # rounded to float32, as PyTorch's
    return torch.floor(index.float() * scale).long().clamp_max(source - 1)


def upsampled_rows(x: Parts, first: int, last: int, size: tuple[int, int]) -> torch.Tensor:
    """Rows [first, last) of x nearest-up-sampled to ``size`` (H, W), from x's rows only: no index leaves the host
    and none is read back (×2 by repeating rows, any other ratio by an index built on x's device)."""
    source_height = x.height
    if size[0] == 2 * source_height:
        start, stop = first // 2, (last - 1) // 2 + 1
        band = x.rows(start, stop).repeat_interleave(2, dim=2)[:, :, first - 2 * start:last - 2 * start]
    else:  # ⌊i·s⌋ with s = source/target rounded to float32: one row of margin each side covers the rounding
        start = max(0, first * source_height // size[0] - 1)
        stop = min(source_height, (last - 1) * source_height // size[0] + 2)
        source = x.rows(start, stop)
        index = nearest_rows(first, last, source_height, size[0], device=source.device) - start
        band = source.index_select(2, index)
    return F.interpolate(band, size=(last - first, size[1]), mode="nearest")


def gather(x: Parts, top: int, bottom: int, *, pre=None, upsample: tuple[int, int] | None = None) -> torch.Tensor:
    """Input rows [top, bottom) of pre(x) or of x up-sampled to ``upsample`` (H, W), zero outside."""
    height = upsample[0] if upsample else x.height
    first, last = max(top, 0), min(bottom, height)
    band = upsampled_rows(x, first, last, upsample) if upsample else x.rows(first, last)
    if pre is not None:
        band = pre(band)
    return pad_rows(band, first - top, bottom - last)


def bandable(conv) -> bool:
    """Whether ``conv`` is a plain zero-padded, undilated ``nn.Conv2d`` (not a LoRA or other wrapper, whose
    forward does more than its weight shows)."""
    return (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros"
            and conv.dilation == (1, 1) and not isinstance(conv.padding, str))


def same_size(conv) -> bool:
    """Whether ``conv`` keeps the size (stride 1, padding k//2), as an up-sampler's convolution does."""
    return conv.stride == (1, 1) and conv.padding[0] * 2 == conv.kernel_size[0] - 1


def check_conv(conv) -> None:
    if not bandable(conv):
        raise InvalidArgumentError(f"the lean mode runs plain zero-padded, undilated convolutions; {conv} is not one")


def banded_conv(x: Parts, conv: nn.Conv2d, band_elements: int, *, pre=None, upsample: tuple[int, int] | None = None,
                post=None, in_place: bool = False) -> Parts:
    """conv(pre(x)) or conv(nearest-upsample(x)), as :class:`Parts`, in bands of output rows.

    ``post(y, top, bottom)`` transforms each output band (rows [top, bottom)) before it is stored; ``in_place``
    stores it over x (see the module docstring)."""
    check_conv(conv)
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = conv.kernel_size, conv.stride, conv.padding
    in_h, in_w = upsample if upsample else (x.height, x.width)
    out_h = conv_output_size(in_h, kernel_h, stride_h, pad_h)
    out_w = conv_output_size(in_w, kernel_w, stride_w, pad_w)
    if in_place and (upsample or not same_size(conv) or conv.in_channels != conv.out_channels):
        raise InvalidArgumentError("an in-place banded convolution needs stride 1 and as many output as input "
                                   f"channels and pixels; {conv} is not one")
    step = rows_per_band(max(x.channels * in_w * stride_h, conv.out_channels * out_w), band_elements)
    step = max(step, pad_h)  # a band's kept-aside rows must be the rows just above the next band
    out = x if in_place else Parts.empty(conv.out_channels, out_h, out_w, like=x.first)
    above = None  # in place: input rows [top − pad, top), as they were before the band above overwrote them
    for top, bottom in spans(out_h, step, x.first.is_meta):
        if above is not None:  # in place, past the first band (stride 1: input rows up to bottom + pad)
            y = _convolve(_with_rows_above(x, above, top, bottom + pad_h, pre), conv)
        else:
            y = conv_rows(x, conv, top, bottom, pre=pre, upsample=upsample)
        if in_place and pad_h:
            above = x.rows(bottom - pad_h, bottom).clone()
        out.write_rows(top, post(y, top, bottom) if post else y)
    return out


def conv_rows(x, conv: nn.Conv2d, top: int, bottom: int, *, pre=None, upsample=None) -> torch.Tensor:
    """Output rows [top, bottom) (inside the output) of conv(pre(x)) or conv(nearest-upsample(x)), from their input
    rows and halo."""
    (kernel_h, _), (stride_h, _), (pad_h, _) = conv.kernel_size, conv.stride, conv.padding
    band = gather(x, top * stride_h - pad_h, (bottom - 1) * stride_h - pad_h + kernel_h, pre=pre, upsample=upsample)
    return _convolve(band, conv)


def _convolve(band: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv over a band that carries its own vertical padding (rows of halo or zeros)."""
    return F.conv2d(band, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)


def _with_rows_above(x: Parts, above: torch.Tensor, top: int, last: int, pre) -> torch.Tensor:
    """pre([rows kept aside ‖ x rows top … last)]), zero rows below the image."""
    band = torch.cat([above, x.rows(top, min(last, x.height))], dim=2)
    if pre is not None:
        band = pre(band)
    return pad_rows(band, 0, max(0, last - x.height))


class Upsampled:
    """conv(nearest-upsample(x)) of ``source``, computed on demand band by band: the up-sampler fused into the
    block that reads it, so the up-sampled activation (at 16384² the largest of the UNet) never exists whole. Each
    read recomputes its rows; reads look like :class:`Parts` to the lean resnet (``rows``, ``channels``, …)."""

    def __init__(self, source: Parts, conv: nn.Conv2d, size: tuple[int, int]):
        check_conv(conv)
        if not same_size(conv):
            raise InvalidArgumentError(f"a fused up-sampler needs a same-size convolution; {conv} is not one")
        self.source, self.conv, self.size = source, conv, size

    channels = property(lambda self: self.conv.out_channels)
    height = property(lambda self: self.size[0])
    width = property(lambda self: self.size[1])
    first = property(lambda self: self.source.first)

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        first, last = max(top, 0), min(bottom, self.height)
        out = conv_rows(self.source, self.conv, first, last, upsample=self.size)
        return pad_rows(out, first - top, bottom - last)

    def tensor(self) -> torch.Tensor:
        return self.rows(0, self.height)

    def take(self) -> "Upsampled":
        return Upsampled(self.source.take(), self.conv, self.size)

    def release(self) -> None:
        self.source.release()

    def __add__(self, other: Parts) -> "Joined":
        return Joined([self, other])


class Joined:
    """The channel concatenation of row sources (an :class:`Upsampled` and a skip's :class:`Parts`)."""

    def __init__(self, sources: list):
        self.sources = sources

    channels = property(lambda self: sum(s.channels for s in self.sources))
    height = property(lambda self: self.sources[0].height)
    width = property(lambda self: self.sources[0].width)
    first = property(lambda self: self.sources[0].first)

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        return torch.cat([s.rows(top, bottom) for s in self.sources], dim=1)

    def tensor(self) -> torch.Tensor:
        return self.rows(0, self.height)

    def release(self) -> None:
        for source in self.sources:
            source.release()
