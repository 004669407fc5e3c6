"""A PNG written band by band, so that an image can be saved while it is being decoded and never exists whole.

The file is 8-bit RGB, not interlaced: the signature, IHDR, the text chunks (``tEXt``, or ``iTXt`` for text that is
not Latin-1, as Pillow writes them), IDAT chunks of a ``zlib.compressobj`` stream over the filtered rows, and IEND;
every chunk ends with the CRC-32 of its type and data (PNG specification, section 5.3).

Each row is filtered with the type that minimises the sum of its bytes taken as signed (libpng's heuristic, Pillow's
default for RGB): None, Sub (x − a), Up (x − b), Average (x − ⌊(a + b)/2⌋) or Paeth (x − the one of a, b, c nearest
to p = a + b − c), with a the byte one pixel to the left, b the one above and c the one above-left, all mod 256.
Rows are filtered ``FILTER_ROWS`` at a time, so the writer's temporaries do not grow with the band.
"""

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..fileio import atomic_write

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = 3
FILTER_ROWS = 16
IDAT_BYTES = 1 << 20  # compressed bytes gathered before an IDAT chunk is written
COMPRESS_LEVEL = 6  # Pillow's default
SIGNED_SIZE = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)  # |v| of a byte v read as signed


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def text_chunk(key: str, value: str) -> bytes:
    """``tEXt`` when ``value`` is Latin-1, else an uncompressed ``iTXt`` (UTF-8)."""
    try:
        return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def filter_rows(rows: np.ndarray, above: np.ndarray) -> np.ndarray:
    """(n, W·3) uint8 rows, with the row before them (``above``, zeros for the first row of the image), to (n,
    1 + W·3) filtered rows, each led by its filter type (module docstring)."""
    x = rows.astype(np.int16)
    b = np.concatenate([above[None].astype(np.int16), x[:-1]])
    a = np.zeros_like(x)
    a[:, CHANNELS:] = x[:, :-CHANNELS]
    c = np.zeros_like(x)
    c[:, CHANNELS:] = b[:, :-CHANNELS]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    candidates = np.stack([x, x - a, x - b, x - (a + b) // 2, x - paeth]).astype(np.uint8)  # mod 256
    cost = SIGNED_SIZE[candidates].sum(axis=2, dtype=np.int64)  # (5, n)
    kind = cost.argmin(axis=0)
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = kind
    out[:, 1:] = candidates[kind, np.arange(x.shape[0])]
    return out


class PngStream:
    """Writes an RGB PNG of ``width`` × ``height`` to an open binary file from bands of rows given top to bottom
    (:meth:`write`, (rows, width, 3) uint8); :meth:`close` checks that every row came and ends the file."""

    def __init__(self, file, width: int, height: int, text: dict[str, str] | None = None,
                 level: int = COMPRESS_LEVEL):
        self.file, self.width, self.height, self.rows = file, width, height, 0
        self.above = np.zeros(width * CHANNELS, dtype=np.uint8)
        self.compressor = zlib.compressobj(level)
        self.pending = bytearray()
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, filters, no interlace
        file.write(SIGNATURE + chunk(b"IHDR", header))
        for key, value in (text or {}).items():
            file.write(text_chunk(key, value))

    def write(self, band: np.ndarray) -> None:
        if band.ndim != 3 or band.shape[1:] != (self.width, CHANNELS) or band.dtype != np.uint8:
            raise InvalidArgumentError(f"a band of a {self.width}-pixel-wide RGB PNG is (rows, {self.width}, 3) uint8; "
                                       f"got {band.shape} {band.dtype}")
        if self.rows + band.shape[0] > self.height:
            raise InvalidArgumentError(f"{self.rows + band.shape[0]} rows given to a PNG of {self.height}")
        flat = band.reshape(band.shape[0], -1)
        for first in range(0, flat.shape[0], FILTER_ROWS):
            rows = flat[first:first + FILTER_ROWS]
            self._add(self.compressor.compress(filter_rows(rows, self.above).tobytes()))
            self.above = rows[-1].copy()
        self.rows += band.shape[0]

    def _add(self, data: bytes, final: bool = False) -> None:
        self.pending += data
        if len(self.pending) >= IDAT_BYTES or (final and self.pending):
            self.file.write(chunk(b"IDAT", bytes(self.pending)))
            self.pending.clear()

    def close(self) -> None:
        if self.rows != self.height:
            raise InvalidArgumentError(f"a PNG of {self.height} rows was given {self.rows}")
        self._add(self.compressor.flush(), final=True)
        self.file.write(chunk(b"IEND", b""))


def write_png_bands(path: str | os.PathLike, width: int, height: int, bands, text: dict[str, str] | None = None
                    ) -> Path:
    """Write the PNG whose rows ``bands`` yields ((rows, width, 3) uint8, top to bottom) atomically (a temporary
    file renamed onto ``path`` once complete: :func:`~linfuse.fileio.atomic_write`)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            stream = PngStream(file, width, height, text)
            for band in bands:
                stream.write(band)
            stream.close()

    return atomic_write(path, write)
