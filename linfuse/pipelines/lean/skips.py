"""The UNet's skip activations between the down and the up path: kept where they are, or parked in host memory.

At 16384² an SD-1.5 sample's skips take 12.7 GiB, most of it at the finest level, and the up path needs them last
in, first out. Parked (``park=True``, CUDA), each is copied to pinned host memory on a side stream as it is made and
copied back one ahead of its use, so the copies overlap the UNet's compute; the device keeps at most the skip in
use and the next one. In a meta-device trace the host copies are counted as host memory
(:func:`~linfuse.pipelines.memory_trace.note_host`); on the CPU there is nothing to park to.
"""

import torch

from ..memory_trace import note_host
from .parts import Parts


class SkipStore:
    def __init__(self, park: bool, device: torch.device):
        self.park = park and device.type in ("cuda", "meta")
        self.device = device
        self.stack: list[list[torch.Tensor]] = []
        self.shapes: list[tuple[int, ...]] = []  # (1, C, H, W) of every skip held, the last pushed last
        self.ready: Parts | None = None  # the top of the stack, already back on the device
        self.stream = torch.cuda.Stream(device) if self.park and device.type == "cuda" else None

    def push(self, parts: Parts) -> None:
        self.shapes.append((1, parts.channels, parts.height, parts.width))
        self.stack.append([self._to_host(t) for t in parts.tensors] if self.park else list(parts.tensors))

    def pop(self, residual: torch.Tensor | None = None) -> Parts:
        """The last skip pushed (plus a ControlNet ``residual``), on the device; the next one starts coming back."""
        parts, arrived = self.ready if self.ready is not None else self._fetch()
        self.shapes.pop()
        if arrived is not None:
            torch.cuda.current_stream(self.device).wait_event(arrived)
            for tensor in parts.tensors:
                tensor.record_stream(torch.cuda.current_stream(self.device))
        self.ready = self._fetch() if self.park and self.stack else None
        return parts.add_(residual) if residual is not None else parts

    def _fetch(self) -> tuple[Parts, torch.cuda.Event | None]:
        tensors = self.stack.pop()
        if not self.park:
            return Parts(tensors), None
        if tensors[0].is_meta:
            return Parts([torch.empty_like(t) for t in tensors]), None
        with torch.cuda.stream(self.stream):
            back = [t.to(self.device, non_blocking=True) for t in tensors]
            arrived = self.stream.record_event()
        return Parts(back), arrived

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_meta:
            host = torch.empty_like(tensor)
            note_host(host)
            return host
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)  # its memory is not reused before the copy has read it
        return host
