"""An activation parked in host memory and read back one band of rows at a time (the floor rung's skips and
transformer residuals).

The activation (1, C, H, W) is stored row-major, as (H, W, C) bytes, so rows [top, bottom) of every channel are one
contiguous byte range: parking copies it band by band (a band-sized channels-last copy on the device, then its bytes
to the host), and :meth:`HostRows.rows` brings a band back as a (1, C, rows, W) view of a fresh device buffer. On
CUDA the host bytes are pinned, in the power-of-two pieces of :func:`pinned_pieces`, and the copies are
queued on the current stream: a parked band is read before anything that runs after it may reuse its device memory,
and no host sync is needed. Elsewhere the host copy is ordinary memory (on the CPU this saves nothing; it runs the
same code, which is what the tests check). In a meta-device trace the host bytes count as host memory.
"""

import os
import shutil
import tempfile

import torch

from ...errors import LinfuseError
from ..memory_trace import on_host
from .parts import pad_rows, rows_per_band, spans

MIN_PIECE = 1 << 20


def pinned_pieces(nbytes: int) -> list[int]:
    """Sizes of the pinned host blocks that hold ``nbytes``: the powers of two of its binary expansion (down to 1 MiB,
    the rest rounded up to it). PyTorch's caching host allocator rounds each block up to a power of two, so one
    block for a 1.25 GiB skip would take 2 GiB; these take what the skip holds, to within 1 MiB."""
    pieces, remaining = [], nbytes
    while remaining > 0:
        piece = max(MIN_PIECE, 1 << (remaining.bit_length() - 1))
        pieces.append(piece)
        remaining -= piece
    return pieces


class HostRows:
    """A row source (``rows``, ``channels``, ``height``, ``width``, ``first``) whose values wait in host memory, or
    with ``directory`` in an unnamed temporary file there (the CPU's floor, where host memory is the device's)."""

    def __init__(self, x, band_elements: int, directory: str | None = None):
        like = x.first
        self.channels, self.height, self.width = x.channels, x.height, x.width
        self.dtype, self.device = like.dtype, like.device
        self.row_bytes = self.channels * self.width * like.element_size()
        self.first = like.new_empty(0)
        self.pieces, self.file = [], None
        nbytes = self.row_bytes * self.height
        if like.is_meta:
            if directory is None:  # on disk: nothing in memory to count
                with on_host(sum(pinned_pieces(nbytes))):  # in elements of its dtype, as the activation it holds
                    self.pieces = [torch.empty(x.channels * x.height * x.width, dtype=like.dtype, device="meta")]
            return
        if directory is not None:
            self.file = _parking_file(directory, nbytes)
        else:
            pinned = self.device.type == "cuda"
            sizes = pinned_pieces(nbytes) if pinned else [nbytes]
            self.pieces = [torch.empty(size, dtype=torch.uint8, pin_memory=pinned) for size in sizes]
        step = rows_per_band(self.channels * self.width, band_elements)
        for top, bottom in spans(self.height, step):
            band = x.rows(top, bottom).permute(0, 2, 3, 1).contiguous()
            self._copy(top, band.view(-1).view(torch.uint8), to_host=True)

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) on the device, zero outside the image."""
        first, last = max(top, 0), min(bottom, self.height)
        flat = torch.empty((last - first) * self.row_bytes, dtype=torch.uint8, device=self.device)
        if not flat.is_meta:
            self._copy(first, flat, to_host=False)
        band = flat.view(self.dtype).view(1, last - first, self.width, self.channels).permute(0, 3, 1, 2)
        return pad_rows(band, first - top, bottom - last)

    def tensor(self) -> torch.Tensor:
        return self.rows(0, self.height)

    def take(self) -> "HostRows":
        return self

    def release(self) -> None:
        self.pieces = []
        if self.file is not None:
            self.file.close()  # unnamed: its blocks are freed with it
            self.file = None

    def _copy(self, top: int, flat: torch.Tensor, *, to_host: bool) -> None:
        """Copy the device bytes ``flat`` of rows from ``top`` on to or from the host pieces (asynchronous on CUDA)
        or the file."""
        start, end, offset = top * self.row_bytes, top * self.row_bytes + flat.numel(), 0
        if self.file is not None:
            _file_copy(self.file.fileno(), start, flat.numpy(), to_file=to_host)
            return
        for piece in self.pieces:
            low, high = max(start, offset), min(end, offset + piece.numel())
            if low < high:
                host, device = piece[low - offset:high - offset], flat[low - start:high - start]
                (host.copy_(device, non_blocking=True) if to_host else device.copy_(host, non_blocking=True))
            offset += piece.numel()


class DiskSpaceError(LinfuseError, OSError):
    """The disk cannot hold what the floor memory mode parks there."""


def _parking_file(directory: str, nbytes: int):
    """An unnamed temporary file in ``directory`` for ``nbytes``, after checking that the disk has room."""
    free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise DiskSpaceError(
            f"the floor memory mode parks activations on disk in {directory} and needs {nbytes / 2**30:.2f} GiB more "
            f"there ({free / 2**30:.2f} GiB free): free some space or point TMPDIR at a larger disk")
    return tempfile.TemporaryFile(dir=directory)


def _file_copy(descriptor: int, position: int, buffer, *, to_file: bool) -> None:
    """All of ``buffer`` (a NumPy view of a band's bytes) written at, or read from, ``position`` in the file."""
    view, done = memoryview(buffer).cast("B"), 0
    while done < len(view):
        if to_file:
            count = os.pwrite(descriptor, view[done:], position + done)
        else:
            count = os.preadv(descriptor, [view[done:]], position + done)
        if count <= 0:
            raise OSError(f"the parking file ended at byte {position + done}")
        done += count
