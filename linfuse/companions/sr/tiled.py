"""Upscaling whole pictures of any size with an SR companion, one tile at a time.

The models are convolutional with a finite receptive field (radius ρ low-resolution pixels), so a tile computed
with ρ pixels of real context on each side equals the same region of the whole-image result; only the tile's
centre is kept. Chroma (Cb, Cr) is upscaled bicubically, as the SR literature does; luma goes through the model.
The output is assembled in a uint8 array, so a 16K picture never exists as one float tensor.
"""

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ...errors import InvalidArgumentError
from .espcn import ESPCN
from .sesr import SESR

MAX_OUTPUT_SIDE = 65536


def receptive_radius(model: torch.nn.Module) -> int:
    """Low-resolution pixels of context each output needs on every side: Σ (k − 1)/2 over the convolutions."""
    if isinstance(model, (ESPCN, SESR)):
        return sum(m.kernel_size[0] // 2 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    raise InvalidArgumentError(f"upscale_image needs an ESPCN or SESR model; got {type(model).__name__}")


def _tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


@torch.no_grad()
def upscale_luma(model: torch.nn.Module, luma: np.ndarray, *, tile: int = 256, progress: bool = False) -> np.ndarray:
    """luma (H, W) float in [0, 1] → (sH, sW) uint8, computed in tiles of ``tile`` input pixels plus context."""
    scale, margin = model.scale, receptive_radius(model)
    height, width = luma.shape
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    out = np.empty((height * scale, width * scale), dtype=np.uint8)
    spans = [(ys, xs) for ys in _tile_spans(height, tile) for xs in _tile_spans(width, tile)]
    for (y0, y1), (x0, x1) in tqdm(spans, desc="upscale", disable=not progress):
        top, left = max(0, y0 - margin), max(0, x0 - margin)
        bottom, right = min(height, y1 + margin), min(width, x1 + margin)
        patch = torch.from_numpy(np.ascontiguousarray(luma[top:bottom, left:right]))[None, None].to(device, dtype)
        result = model(patch)[0, 0].float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        oy, ox = (y0 - top) * scale, (x0 - left) * scale
        out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = result[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out


def upscale_image(image: Image.Image, model: torch.nn.Module, *, tile: int = 256,
                  progress: bool = False) -> Image.Image:
    """An RGB picture ``model.scale`` times larger: luma by the model (tiled), chroma by bicubic resampling."""
    if tile < 16:
        raise InvalidArgumentError(f"tile must be >= 16 input pixels; got {tile}")
    scale = model.scale
    if max(image.size) * scale > MAX_OUTPUT_SIDE:
        raise InvalidArgumentError(f"the output would be {image.width * scale}×{image.height * scale}; sides up to "
                                   f"{MAX_OUTPUT_SIDE} are supported")
    ycbcr = image.convert("RGB").convert("YCbCr")
    y, cb, cr = ycbcr.split()
    luma = np.asarray(y, dtype=np.float32) / 255.0
    big_y = Image.fromarray(upscale_luma(model, luma, tile=tile, progress=progress), mode="L")
    size = (image.width * scale, image.height * scale)
    return Image.merge("YCbCr", (big_y, cb.resize(size, Image.BICUBIC), cr.resize(size, Image.BICUBIC))).convert("RGB")
