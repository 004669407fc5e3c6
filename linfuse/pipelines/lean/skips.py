"""The UNet's skip activations between the down and the up path: kept where they are, or parked in host memory.

At 16384² an SD-1.5 sample's skips take 12.7 GiB, most of it at the finest level, and the up path needs them last
in, first out. Parked (``park=True``, CUDA), each is copied to pinned host memory on a side stream as it is made and
copied back while the layer before its use runs (:meth:`SkipStore.prefetch`), so the copies overlap the UNet's
compute; the device holds at most the skip in use or the next one. In a meta-device trace the host copies are
counted as host memory (:func:`~linfuse.pipelines.memory_trace.on_host`); on the CPU there is nothing to park to.
The floor rung parks them as :class:`~.host_rows.HostRows` instead: never brought back whole, read a band at a time
by the block that joins them.
"""

import torch

from ..memory_trace import on_host
from .host_rows import HostRows, pinned_pieces
from .parts import Parts


class SkipStore:
    def __init__(self, park: bool, device: torch.device, *, band_elements: int | None = None,
                 directory: str | None = None):
        """``band_elements`` given (the floor rung): parked skips are :class:`HostRows`, read back band by band
        by the block that uses them (on any device: on the CPU the host copy saves nothing, but runs the same code),
        or with ``directory`` in temporary files there."""
        self.directory = directory
        self.host_rows = band_elements if park else None
        self.park = park and device.type in ("cuda", "meta") and self.host_rows is None
        self.device = device
        self.stack: list = []  # per skip: its tensors, (pinned pieces, shape, dtype) of each when parked, or HostRows
        self.shapes: list[tuple[int, ...]] = []  # (1, C, H, W) of every skip held, the last pushed last
        self.ready = None  # (parts, arrival event) of the top of the stack, already coming back
        self.stream = torch.cuda.Stream(device) if self.park and device.type == "cuda" else None

    def push(self, parts: Parts) -> None:
        self.shapes.append((1, parts.channels, parts.height, parts.width))
        if self.host_rows is not None:
            self.stack.append(HostRows(parts, self.host_rows, self.directory))
        else:
            self.stack.append([self._to_host(t) for t in parts.tensors] if self.park else list(parts.tensors))

    def holds(self, parts: Parts) -> bool:
        """Whether a skip held on the device shares ``parts``' tensors (so nothing may be written over them)."""
        ids = {id(tensor) for tensor in parts.tensors}
        return any(isinstance(held, list) and any(id(t) in ids for t in held) for held in self.stack)

    def parked_top(self) -> HostRows | None:
        """The last skip pushed when skips are :class:`HostRows` (the floor rung with parking), else None."""
        return self.stack[-1] if self.host_rows is not None and self.stack else None

    def pop(self, residual: torch.Tensor | None = None) -> Parts | HostRows:
        """The last skip pushed (plus a ControlNet ``residual``), on the device, or as :class:`HostRows`."""
        if self.host_rows is not None:
            self.shapes.pop()
            held = self.stack.pop()
            return held if residual is None else Parts.of(held.tensor()).add_(residual)
        parts, arrived = self.ready if self.ready is not None else self._fetch()
        self.shapes.pop()
        if arrived is not None:
            torch.cuda.current_stream(self.device).wait_event(arrived)
            for tensor in parts.tensors:
                tensor.record_stream(torch.cuda.current_stream(self.device))
        self.ready = None
        return parts.add_(residual) if residual is not None else parts

    def prefetch(self) -> None:
        """Start copying the next skip back (parked skips only), to overlap what runs until it is popped."""
        if self.park and self.stack and self.ready is None:
            self.ready = self._fetch()

    def _fetch(self) -> tuple[Parts, torch.cuda.Event | None]:
        held = self.stack.pop()
        if not self.park:
            return Parts(held), None
        if held[0][0][0].is_meta:
            return Parts([torch.empty(shape, dtype=dtype, device="meta") for _, shape, dtype in held]), None
        with torch.cuda.stream(self.stream):
            back = []
            for pieces, shape, dtype in held:
                tensor = torch.empty(shape, dtype=dtype, device=self.device)
                _copy_pieces(_bytes(tensor), pieces, to_pieces=False)
                back.append(tensor)
            arrived = self.stream.record_event()
        return Parts(back), arrived

    def _to_host(self, tensor: torch.Tensor) -> tuple[list[torch.Tensor], torch.Size, torch.dtype]:
        """The tensor's bytes in pinned pieces (:func:`pinned_pieces`), its shape and dtype."""
        nbytes = tensor.untyped_storage().nbytes() if tensor.is_meta else tensor.numel() * tensor.element_size()
        if tensor.is_meta:
            with on_host(sum(pinned_pieces(nbytes))):
                host = torch.empty_like(tensor)
            return [host], tensor.shape, tensor.dtype
        pieces = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for size in pinned_pieces(nbytes)]
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            _copy_pieces(_bytes(tensor.contiguous()), pieces, to_pieces=True)
        tensor.record_stream(self.stream)  # its memory is not reused before the copy has read it
        return pieces, tensor.shape, tensor.dtype


def _copy_pieces(flat: torch.Tensor, pieces: list[torch.Tensor], *, to_pieces: bool) -> None:
    """Asynchronous copies between a tensor's bytes ``flat`` and consecutive pinned ``pieces`` (the last one longer
    than what is left)."""
    start = 0
    for piece in pieces:
        count = min(piece.numel(), flat.numel() - start)
        source, target = (flat[start:start + count], piece[:count]) if to_pieces else \
            (piece[:count], flat[start:start + count])
        target.copy_(source, non_blocking=True)
        start += count


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1).view(torch.uint8)
