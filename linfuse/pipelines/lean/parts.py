"""Activations of one sample held in channel parts, and the row bands the lean mode computes them in.

At 16384² an SD UNet's finest level holds tensors of 2048×2048 latent pixels with up to 960 channels: 4.0e9
elements, past the 2^31 at which some convolution and upsampling kernels fail. :class:`Parts` keeps such an
activation (1, C, H, W) as a list of tensors split along the channels, each at most ``MAX_PART_ELEMENTS``; a skip
concatenation is two lists joined, never a copy. Work is done in bands of rows: :meth:`Parts.rows` gathers rows
[top, bottom) of every channel into one band (zeros outside the image, as a convolution's padding), small enough to
compute on, and :meth:`Parts.write_rows` stores a band of results.
"""

import torch

# A quarter of 2^31: far from the limit, and (parked in pinned host memory, whose blocks round up to a power of two)
# parts of a few hundred MiB waste less than parts near 2 GiB.
MAX_PART_ELEMENTS = 2**29


def spans(length: int, step: int, meta: bool = False) -> list[tuple[int, int]]:
    """[start, end) pieces of ``range(length)`` of ``step`` items (the last may be shorter).

    On the meta device (the memory preflight's trace) only the first, second and last pieces: the pieces between
    allocate the same shapes as the second, so the traced peak is the same, and a 16K image's hundreds of bands
    would cost seconds of Python for an estimate."""
    step = max(1, step)
    pieces = [(start, min(start + step, length)) for start in range(0, length, step)]
    if meta and len(pieces) > 3:
        pieces = [pieces[0], pieces[1], pieces[-1]]
    return pieces


def rows_per_band(elements_per_row: int, budget: int) -> int:
    """Rows of a band whose tensors hold at most ``budget`` elements (at least one row)."""
    return max(1, budget // max(1, elements_per_row))


def channel_splits(channels: int, pixels: int, limit: int = MAX_PART_ELEMENTS) -> list[int]:
    """Channel counts of the fewest near-equal parts of (channels, pixels) each under ``limit`` elements."""
    count = -(-channels * pixels // limit)
    count = min(channels, max(1, count))
    base, extra = divmod(channels, count)
    return [base + (1 if index < extra else 0) for index in range(count)]


class Parts:
    """An activation (1, C, H, W) as tensors along the channels (see the module docstring)."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = list(tensors)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "Parts":
        return cls([tensor])

    @classmethod
    def empty(cls, channels: int, height: int, width: int, like: torch.Tensor) -> "Parts":
        return cls([like.new_empty(1, count, height, width) for count in channel_splits(channels, height * width)])

    @property
    def channels(self) -> int:
        return sum(t.shape[1] for t in self.tensors)

    @property
    def height(self) -> int:
        return self.tensors[0].shape[2]

    @property
    def width(self) -> int:
        return self.tensors[0].shape[3]

    @property
    def first(self) -> torch.Tensor:
        return self.tensors[0]

    def __add__(self, other: "Parts") -> "Parts":
        """The channel concatenation [self ‖ other], sharing the tensors."""
        return Parts(self.tensors + other.tensors)

    def take(self) -> "Parts":
        """A new holder of these tensors, this one emptied: a callee that takes its input so frees it when done,
        while the caller's variable still names the (now empty) object."""
        taken, self.tensors = Parts(self.tensors), []
        return taken

    def release(self) -> None:
        """Drop this object's references (the tensors are freed unless held elsewhere, e.g. as skips)."""
        self.tensors = []

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) of all channels as one (1, C, bottom − top, W) tensor; rows outside the image are
        zero."""
        inside = slice(max(top, 0), min(bottom, self.height))
        band = torch.cat([t[:, :, inside] for t in self.tensors], dim=1) if len(self.tensors) > 1 \
            else self.tensors[0][:, :, inside]
        return pad_rows(band, max(0, -top), max(0, bottom - self.height))

    def write_rows(self, top: int, band: torch.Tensor) -> None:
        for tensor, channels in self._ranges():
            tensor[:, :, top:top + band.shape[2]].copy_(band[:, channels])

    def add_rows_(self, top: int, band: torch.Tensor) -> None:
        """In place, + a band (1, C, rows, W) to rows [top, top + rows)."""
        for tensor, channels in self._ranges():
            tensor[:, :, top:top + band.shape[2]].add_(band[:, channels])

    def add_(self, other: torch.Tensor) -> "Parts":
        """In place, + a (1, C, H, W) tensor or one that broadcasts over the rows and columns, (1, C, 1, 1)."""
        for tensor, channels in self._ranges():
            tensor.add_(other[:, channels])
        return self

    def tensor(self) -> torch.Tensor:
        """One tensor (for modules run whole: only where it is small)."""
        return self.tensors[0] if len(self.tensors) == 1 else torch.cat(self.tensors, dim=1)

    def _ranges(self):
        start = 0
        for tensor in self.tensors:
            yield tensor, slice(start, start + tensor.shape[1])
            start += tensor.shape[1]


def pad_rows(band: torch.Tensor, above: int, below: int) -> torch.Tensor:
    """``band`` with zero rows added above and below (nothing copied when there are none)."""
    if not above and not below:
        return band
    return torch.nn.functional.pad(band, (0, 0, above, below))
