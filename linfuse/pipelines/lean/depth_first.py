"""A diffusers ``ResnetBlock2D`` run depth-first (the floor rung): each band of output rows from the block's input
alone, the output written over the input.

The lean resnet (:mod:`.resnet`) stores conv1's output whole. Here nothing of the block's size is stored but its
output, and that goes where the input was::

    h   = conv1(act(GN1(x))) + proj(act(temb))
    out = (shortcut(x) + conv2(act(GN2(h)))) / s

1. GN1's statistics over the bands of x (:func:`~.norm.group_stats`);
2. GN2's statistics over bands of h made and dropped one after another (:func:`~.norm.streamed_group_stats`);
3. for each band of output rows [t, b): h rows [t − p₂, b + p₂) recomputed from x rows [t − p₂ − p₁, b + p₂ + p₁),
   then conv2, the shortcut and the scale, and the band written over x's leading part when the block may overwrite
   it (:class:`Overwriting` keeps aside the p₁ + p₂ input rows the next band still reads).

conv1 runs twice (statistics, then output) plus 2·p₂ halo rows per band: about 1.5–1.7× the block's work for one
activation less. x may be a :class:`~.parts.Parts`, a skip concatenation (:class:`~.conv.Joined` of the running
activation and a skip, on the device or in host memory) or a fused up-sampler's output.
"""

import torch

from .conv import Joined, _convolve, bandable, conv_rows, same_size
from .norm import group_stats, norm_act, streamed_group_stats
from .parts import Parts, pad_rows, rows_per_band, spans
from .resnet import add_shortcut, time_projection
from .resnet import supported as lean_supported


def supported(resnet) -> bool:
    return lean_supported(resnet) and same_size(resnet.conv1) and same_size(resnet.conv2) and bandable(resnet.conv2)


class Overwriting:
    """The rows of ``x`` as they were, while its leading part ``head`` (a :class:`Parts`) is overwritten from the
    top down: the ``halo`` original rows just above the next band to write are kept aside."""

    def __init__(self, x, head: Parts, halo: int):
        self.x, self.head, self.halo = x, head, halo
        self.written, self.kept = 0, None  # kept: head's original rows [max(0, written − halo), written)

    channels = property(lambda self: self.x.channels)
    height = property(lambda self: self.x.height)
    width = property(lambda self: self.x.width)
    first = property(lambda self: self.x.first)

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        head = self._head_rows(top, bottom)
        if self.x is self.head:
            return head
        return torch.cat([head, *(source.rows(top, bottom) for source in self.x.sources[1:])], dim=1)

    def write(self, top: int, band: torch.Tensor) -> None:
        """Store output rows [top, top + rows) over the head (bands must come in order, from the top)."""
        end = top + band.shape[2]
        self.kept = self._head_rows(max(0, end - self.halo), end).clone()
        self.head.write_rows(top, band)
        self.written = end

    def _head_rows(self, top: int, bottom: int) -> torch.Tensor:
        if self.kept is None or top >= self.written:
            return self.head.rows(top, bottom)
        kept_top = self.written - self.kept.shape[2]
        if top < kept_top:
            raise RuntimeError(f"rows from {top} were overwritten (kept from {kept_top})")
        kept = self.kept[:, :, top - kept_top:min(bottom, self.written) - kept_top]
        return kept if bottom <= self.written else torch.cat([kept, self.head.rows(self.written, bottom)], dim=2)


def depth_first_resnet(resnet, x, temb: torch.Tensor | None, band_elements: int, *, writable: bool) -> Parts | None:
    """The block's output as :class:`Parts` (over x's leading part when ``writable`` and its channels match), or None
    when the block is not one this covers."""
    if not supported(resnet):
        return None
    act, conv1, conv2 = resnet.nonlinearity, resnet.conv1, resnet.conv2
    pre1 = norm_act(group_stats(x, resnet.norm1, band_elements), act)
    projected = time_projection(resnet, temb)
    widest = max(x.channels, conv1.out_channels, conv2.out_channels) * x.width
    step = rows_per_band(widest, band_elements)
    meta = x.first.is_meta

    def hidden(source, top: int, bottom: int) -> torch.Tensor:
        y = conv_rows(source, conv1, top, bottom, pre=pre1)
        return y.add_(projected) if projected is not None else y

    bands = (hidden(x, top, bottom) for top, bottom in spans(x.height, step, meta))
    normalise = norm_act(streamed_group_stats(bands, resnet.norm2, conv1.out_channels, x.first.device), act)
    head = _overwritable_head(x, conv2.out_channels) if writable else None
    halo = conv1.padding[0] + conv2.padding[0]
    source = Overwriting(x, head, halo) if head is not None else x
    out = None if head is not None else Parts.empty(conv2.out_channels, x.height, x.width, like=x.first)
    pad, height = conv2.padding[0], x.height
    for top, bottom in spans(height, step, meta):
        first, last = max(top - pad, 0), min(bottom + pad, height)
        band = resnet.dropout(normalise(hidden(source, first, last)))
        y = _convolve(pad_rows(band, first - (top - pad), bottom + pad - last), conv2)
        y = add_shortcut(resnet, y, source.rows(top, bottom))
        source.write(top, y) if head is not None else out.write_rows(top, y)
    return Parts(head.tensors) if head is not None else out


def _overwritable_head(x, channels: int) -> Parts | None:
    """x's leading part when it is a :class:`Parts` of exactly ``channels`` channels (a fused up-sampler's output or
    host-held rows cannot be written over)."""
    head = x.sources[0] if isinstance(x, Joined) else x
    return head if isinstance(head, Parts) and head.channels == channels else None

