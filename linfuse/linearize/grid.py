"""Where image tokens sit: the 2-D grids of a denoiser's current forward pass.

Local windows (CLEAR) and depth-wise convolutions (SLAB, LiT, …) need each layer's token grid, which diffusers
attention processors are not given. A forward pre-hook on the denoiser reads it from the inputs once per call:

* UNet2DConditionModel: the latent (B, C, H, W); a layer at depth s sees ⌈H/2^s⌉ × ⌈W/2^s⌉ tokens;
* FluxTransformer2DModel: ``img_ids`` (row, column per packed token, in raster order);
* SD3 / PixArt / DiT transformers: the latent (B, C, H, W) cut into p×p patches: (H/p) × (W/p) tokens.

A layer asks ``grid_for(n)`` for the grid with n tokens. Outside a hooked forward (a processor called on its own)
a square grid is assumed when n is a perfect square.
"""

import math

import torch

from ..errors import InvalidArgumentError

MAX_UNET_DEPTH = 8
_ATTRIBUTE = "_linfuse_token_grid"


class TokenGrid:
    """The candidate (height, width) grids of the forward pass under way, finest first."""

    def __init__(self):
        self.sizes: list[tuple[int, int]] = []

    def grid_for(self, num_tokens: int) -> tuple[int, int]:
        for size in self.sizes:
            if size[0] * size[1] == num_tokens:
                return size
        side = math.isqrt(num_tokens)
        if not self.sizes and side * side == num_tokens:
            return side, side
        raise InvalidArgumentError(
            f"cannot place {num_tokens} image tokens on a 2-D grid (grids of this call: {self.sizes or 'none'}); "
            "call the whole denoiser (UNet or transformer) so that linfuse can read the latent size"
        )

    def grid_with_prefix(self, total_tokens: int) -> tuple[tuple[int, int], int]:
        """The image grid of a sequence of (prefix tokens + image tokens), e.g. FLUX's joint [text; image]."""
        if not self.sizes:
            raise InvalidArgumentError(
                "the image grid of this call is unknown; call the whole transformer so that linfuse can read it"
            )
        height, width = self.sizes[0]
        if height * width > total_tokens:
            raise InvalidArgumentError(f"{total_tokens} tokens cannot hold the {height}×{width} image grid")
        return (height, width), total_tokens - height * width

    def record(self, module, args: tuple, kwargs: dict) -> None:
        self.sizes = _grids_of_call(module, args, kwargs)


def attach_token_grid(denoiser) -> TokenGrid:
    """The denoiser's TokenGrid, installing the pre-hook the first time."""
    found = denoiser.__dict__.get(_ATTRIBUTE)
    if found is not None:
        return found[0]
    grid = TokenGrid()
    handle = denoiser.register_forward_pre_hook(lambda m, a, k: grid.record(m, a, k), with_kwargs=True)
    denoiser.__dict__[_ATTRIBUTE] = (grid, handle)
    return grid


def detach_token_grid(denoiser) -> None:
    found = denoiser.__dict__.pop(_ATTRIBUTE, None)
    if found is not None:
        found[1].remove()


def _grids_of_call(module, args: tuple, kwargs: dict) -> list[tuple[int, int]]:
    name = type(module).__name__
    if name.startswith("Flux"):
        ids = kwargs.get("img_ids")
        return [] if ids is None else [raster_grid(ids)]
    latent = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        return []
    height, width = latent.shape[-2:]
    patch = getattr(module.config, "patch_size", None) if hasattr(module, "config") else None
    if patch:
        return [(height // patch, width // patch)]
    sizes = [(height, width)]
    for _ in range(MAX_UNET_DEPTH):
        height, width = -(-height // 2), -(-width // 2)
        sizes.append((height, width))
    return sizes


def raster_grid(ids: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of FLUX ``img_ids`` (N, 3) whose tokens are in raster order; an error otherwise."""
    ids = ids[0] if ids.ndim == 3 else ids
    rows, cols = ids[:, 1].long(), ids[:, 2].long()
    rows, cols = rows - rows.min(), cols - cols.min()
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    expected_rows = torch.arange(height, device=ids.device).repeat_interleave(width)
    expected_cols = torch.arange(width, device=ids.device).repeat(height)
    if ids.shape[0] != height * width or not (torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)):
        raise InvalidArgumentError(
            "local-window attention needs the image tokens (img_ids) as one grid in raster order; this call has "
            f"{ids.shape[0]} tokens over rows 0…{height - 1} and columns 0…{width - 1} (reference-image tokens, as "
            "in FLUX Kontext, are not supported)"
        )
    return height, width
