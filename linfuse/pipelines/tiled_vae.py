"""Tiled VAE decode and encode: memory bounded by one tile, output of any size, crossfaded overlaps.

The latent (or image) is cut into a grid of square tiles of ``tile`` latent pixels that overlap by at least
``overlap``; the last tile of a row or column is flush with the border. Each tile is decoded (encoded) on its own and
written into a canvas on ``canvas_device`` (the CPU by default, so that only one tile occupies the GPU).

Blending. Along one axis, tile i has the weight r_i(x): a linear ramp up across its overlap with the previous tile,
1 in its middle, a ramp down across its overlap with the next; ramps use the centres of the pixels, (k + ½)/len, so
no weight is 0. With R(x) = Σ_i r_i(x) the normalised weights r_i / R sum to 1 at every x, and the 2-D weight of
tile (i, j) is the product (r_i / R)(x) · (c_j / C)(y). The products sum to 1 everywhere, so the canvas is a convex
combination of the tiles at every pixel and no weight canvas is needed.

Streaming. :func:`decode_bands` decodes one row of tiles (a strip) at a time into a float strip of one tile's height
and the image's width, adding the tiles in the order and with the arithmetic of :func:`tiled_decode`; the rows above
the next strip's first row receive no more tiles, so they are converted to 8 bit (:func:`to_uint8`) and handed on,
and the rest (the overlap) moves to the top of the strip. The bands equal ``to_uint8`` of the whole canvas bit for
bit, with one strip held in float instead of the canvas.
"""

import math

import torch

from ..errors import InvalidArgumentError
from .offload import execution_device

DEFAULT_TILE = 64  # latent pixels (512 image pixels for SD VAEs)
DEFAULT_OVERLAP = 16


def check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
        raise InvalidArgumentError(f"tile must be an integer >= 8 (latent pixels); got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= tile // 2:
        raise InvalidArgumentError(f"overlap must be an integer in [0, tile/2 = {tile // 2}]; got {overlap!r}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering [0, length) with overlaps >= ``overlap``, the last one flush."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def axis_weights(length: int, starts: list[int], size: int) -> list[torch.Tensor]:
    """Normalised 1-D blend weights of each tile (see the module docstring); each a tensor of ``size`` values."""
    raw = []
    for i, start in enumerate(starts):
        weight = torch.ones(size, dtype=torch.float64)
        if i > 0:
            left = starts[i - 1] + size - start  # overlap with the previous tile
            weight[:left] = torch.minimum(weight[:left], (torch.arange(left) + 0.5) / left)
        if i + 1 < len(starts):
            right = start + size - starts[i + 1]
            weight[size - right:] = torch.minimum(weight[size - right:], (right - torch.arange(right) - 0.5) / right)
        raw.append(weight)
    total = torch.zeros(length, dtype=torch.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start:start + size] += weight
    return [weight / total[start:start + size] for start, weight in zip(starts, raw, strict=True)]


def weighted_tiles(height: int, width: int, tile: int, overlap: int, scale: int):
    """(y0, x0, size_y, size_x, weight) of every tile of a (height, width) grid, row by row; ``weight`` is the
    tile's 2-D blend weight at ``scale`` × the grid's resolution (float64)."""
    size_y, size_x = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    wy = axis_weights(height * scale, [y * scale for y in ys], size_y * scale)
    wx = axis_weights(width * scale, [x * scale for x in xs], size_x * scale)
    for y0, weight_y in zip(ys, wy, strict=True):
        for x0, weight_x in zip(xs, wx, strict=True):
            yield y0, x0, size_y, size_x, weight_y[:, None] * weight_x[None, :]


def _run_tiles(tile_fn, height: int, width: int, tile: int, overlap: int, scale: int, canvas) -> torch.Tensor:
    """Blend ``tile_fn(y0, x0, sy, sx)`` (outputs ``scale`` × the grid's resolution) into ``canvas``."""
    for y0, x0, sy, sx, weight in weighted_tiles(height, width, tile, overlap, scale):
        out = tile_fn(y0, x0, sy, sx)
        weight = weight.to(device=canvas.device, dtype=canvas.dtype)
        canvas[:, :, y0 * scale:(y0 + sy) * scale, x0 * scale:(x0 + sx) * scale] += out.to(canvas) * weight
    return canvas


def to_uint8(band: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (..., 3, rows, W), to 8 bit, (..., rows, W, 3): round((x + 1)·127.5) clamped to [0, 255].
    A float32 band is converted in place (its values are spent)."""
    band = band.float() if band.dtype != torch.float32 else band
    band = band.add_(1).mul_(127.5).round_().clamp_(0, 255)
    return band.to(torch.uint8).movedim(-3, -1)


def vae_factor(vae) -> int:
    """Image pixels per latent pixel of a VAE: 2^(its resolution levels − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tiled_decode(vae, latents: torch.Tensor, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 canvas_device="cpu", canvas_dtype=torch.float32) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H·f, W·f), from latents in the denoiser's scale (as a pipeline's ``latents``).

    Each tile is normalised with its own GroupNorm statistics and sees only its own latents, so the result differs
    from a decode of the whole latent by an amount that depends on the VAE (see README); one tile equals it exactly.
    """
    check_tiling(tile, overlap)
    scale = vae_factor(vae)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    batch, _, height, width = latents.shape

    def decode(y0, x0, sy, sx):
        return _decode_tile(vae, latents[:, :, y0:y0 + sy, x0:x0 + sx], shift)

    canvas = torch.zeros(batch, vae.config.out_channels, height * scale, width * scale, device=canvas_device,
                         dtype=canvas_dtype)
    return _run_tiles(decode, height, width, tile, overlap, scale, canvas)


def _decode_tile(vae, latents: torch.Tensor, shift: float) -> torch.Tensor:
    """One tile's images from its latents in the denoiser's scale, on the device the VAE computes on (an offloaded
    VAE's hook device, :mod:`.offload`)."""
    z = latents.to(execution_device(vae), vae.dtype) / vae.config.scaling_factor + shift
    with torch.no_grad():
        return vae.decode(z).sample


def strip_rows(latent_height: int, tile: int, factor: int) -> int:
    """Image rows of the float strip :func:`decode_bands` holds: one tile's height."""
    return min(tile, latent_height) * factor


def decode_bands(vae, latents: torch.Tensor, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP):
    """Yield ``(top, band)``: 8-bit rows ``top:top + len`` of the decoded images, (B, rows, W·f, 3) uint8, top to
    bottom, equal to ``to_uint8(tiled_decode(vae, latents, tile=tile, overlap=overlap))`` (module docstring).
    Float memory: one strip of (B, 3, ``strip_rows``, W·f) on the CPU."""
    check_tiling(tile, overlap)
    scale = vae_factor(vae)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    batch, _, height, width = latents.shape
    rows = strip_rows(height, tile, scale)
    strip = torch.zeros(batch, vae.config.out_channels, rows, width * scale)
    starts = tile_starts(height, tile, overlap)
    top = 0  # the image row of the strip's first row
    for y0, x0, sy, sx, weight in weighted_tiles(height, width, tile, overlap, scale):
        if y0 * scale != top:  # a new row of tiles: hand on the rows it does not reach
            _shift(strip, y0 * scale - top)
            top = y0 * scale
        out = _decode_tile(vae, latents[:, :, y0:y0 + sy, x0:x0 + sx], shift)
        strip[:, :, :sy * scale, x0 * scale:(x0 + sx) * scale] += out.to(strip) * weight.to(strip)
        if x0 + sx == width:  # the row of tiles is complete
            following = next((s for s in starts if s > y0), None)
            done = (following - y0) * scale if following is not None else sy * scale
            yield top, to_uint8(strip[:, :, :done])
    del strip


def _shift(strip: torch.Tensor, count: int) -> None:
    """Move the strip's rows ``count:`` to its top in place and zero the rest (copies of at most ``count`` rows,
    so that no copy reads rows it writes)."""
    rows = strip.shape[2]
    for first in range(0, rows - count, count):
        size = min(count, rows - count - first)
        strip[:, :, first:first + size] = strip[:, :, first + count:first + count + size]
    strip[:, :, max(rows - count, 0):].zero_()


def tiled_encode(vae, images: torch.Tensor, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 canvas_device="cpu", canvas_dtype=torch.float32) -> torch.Tensor:
    """Latents in the denoiser's scale, (B, C, H/f, W/f): the blended posterior means of image tiles in [-1, 1].

    The image side must be a multiple of the VAE factor f; ``tile`` and ``overlap`` count latent pixels.
    """
    check_tiling(tile, overlap)
    scale = vae_factor(vae)
    batch, _, pixel_height, pixel_width = images.shape
    if pixel_height % scale or pixel_width % scale:
        raise InvalidArgumentError(f"image size {pixel_width}x{pixel_height} must be a multiple of the VAE factor "
                                   f"{scale}")
    height, width = pixel_height // scale, pixel_width // scale
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def encode(y0, x0, sy, sx):
        x = images[:, :, y0 * scale:(y0 + sy) * scale, x0 * scale:(x0 + sx) * scale]
        x = x.to(execution_device(vae), vae.dtype)  # an offloaded VAE computes on its hook's device
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        return (mean - shift) * vae.config.scaling_factor

    canvas = torch.zeros(batch, vae.config.latent_channels, height, width, device=canvas_device, dtype=canvas_dtype)
    return _run_tiles(encode, height, width, tile, overlap, 1, canvas)
