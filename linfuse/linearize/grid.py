"""Where image tokens sit: the 2-D grids of a denoiser's current forward pass.

Local windows (CLEAR) and depth-wise convolutions (SLAB, LiT, …) need each layer's token grid, which diffusers
attention processors are not given. A forward pre-hook on the denoiser reads it from the inputs once per call:

* UNet2DConditionModel: the latent (B, C, H, W); a layer at depth s sees ⌈H/2^s⌉ × ⌈W/2^s⌉ tokens;
* FluxTransformer2DModel: ``img_ids`` (row, column per packed token, in raster order);
* SD3 / PixArt / DiT transformers: the latent (B, C, H, W) cut into p×p patches: (H/p) × (W/p) tokens.

A layer asks ``grid_for(n)`` for the grid with n tokens. Outside a hooked forward (a processor called on its own)
a square grid is assumed when n is a perfect square.

No forward reads a tensor's values on the host (no ``.item()``, ``int(t)``, ``torch.equal``): that would stall a GPU
stream, break CUDA graphs and break ``torch.compile``'s graph. UNet and patchified grids come from shapes. FLUX's
grid is not in any shape (only H·W is), so it comes, in this order, from

1. the grid declared with :func:`set_image_grid` (a pipeline that knows its latent size);
2. eager: the grid last read from this very ``img_ids`` tensor (a sampler passes the same ids at every step, so
   their values are read once per image, not once per step);
3. under ``torch.compile``: the ids of the call being traced, read once at trace time
   (``torch._dynamo.assume_constant_result``), so the compiled graph holds the grid as constants;
4. eager, new ids: their values (one read).

In 1 and 3 the ids are then checked against the grid on the device (``torch._assert_async``, no host sync, run by
the first layer that asks for the grid): a call
whose ids do not lie on that grid in raster order fails instead of computing on a wrong grid. A compiled transformer
therefore runs one grid per token count unless the grid is declared (a declared grid is a guarded constant: another
declaration recompiles).
"""

import math
import weakref

import torch

from ..errors import InvalidArgumentError

MAX_UNET_DEPTH = 8
_ATTRIBUTE = "_linfuse_token_grid"


class TokenGrid:
    """The candidate (height, width) grids of the forward pass under way, finest first."""

    def __init__(self):
        self.sizes: list[tuple[int, int]] = []
        self.declared: tuple[int, int] | None = None
        self._last_ids: tuple | None = None  # (weak reference to img_ids, its version, its grid)
        self._unchecked: tuple | None = None  # (img_ids, grid) to check on the device at the first layer's call
        self._assumed: tuple | None = None  # (img_ids, grid) that the next flux_grid call takes as they are

    def grid_for(self, num_tokens: int) -> tuple[int, int]:
        self._check()
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
        self._check()
        if not self.sizes:
            raise InvalidArgumentError(
                "the image grid of this call is unknown; call the whole transformer so that linfuse can read it"
            )
        height, width = self.sizes[0]
        if height * width > total_tokens:
            raise InvalidArgumentError(f"{total_tokens} tokens cannot hold the {height}×{width} image grid")
        return (height, width), total_tokens - height * width

    def record(self, module, args: tuple, kwargs: dict) -> None:
        self.sizes = _grids_of_call(module, args, kwargs, self)

    def flux_grid(self, ids: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of FLUX ``img_ids`` without a host sync once known (see the module docstring)."""
        count = ids.shape[-2]
        assumed, self._assumed = self._assumed, None
        if assumed is not None and assumed[0] is ids:
            return assumed[1]
        if self.declared is not None and self.declared[0] * self.declared[1] == count:
            grid = self.declared
        elif torch.compiler.is_compiling():
            grid = _grid_at_trace_time(ids)
        else:
            last = self._last_ids
            if last is not None and last[0]() is ids and last[1] == ids._version:
                return last[2]
            grid = raster_grid(ids)
            self.remember(ids, grid)
            return grid
        self._unchecked = (ids, grid)  # checked by the first layer that asks (no tensor work in the pre-hook)
        return grid

    def _check(self) -> None:
        if self._unchecked is not None:
            ids, grid = self._unchecked
            self._unchecked = None
            check_raster_async(ids, grid)

    def assume(self, ids: torch.Tensor, grid: tuple[int, int]) -> None:
        """The next :meth:`flux_grid` call for these very ``ids`` returns ``grid`` unchecked (the caller built the
        ids from ids it checked, e.g. a band of rows of them)."""
        self._assumed = (ids, grid)

    def remember(self, ids: torch.Tensor, grid: tuple[int, int]) -> None:
        """Record that ``ids`` (unchanged from now on) lie on ``grid``, so that eager calls do not read them again."""
        if not torch.compiler.is_compiling():
            self._last_ids = (weakref.ref(ids), ids._version, grid)


def set_image_grid(denoiser, height: int | None, width: int | None = None) -> None:
    """Declare the (rows, columns) token grid of the image the denoiser's next calls work on (None: forget it).
    Only FLUX needs it (its grid is not in any shape): a declared grid is used without reading ``img_ids``."""
    grid = attach_token_grid(denoiser)
    if height is None:
        grid.declared = None
        return
    if not all(isinstance(n, int) and n >= 1 for n in (height, width)):
        raise InvalidArgumentError(f"height and width must be integers >= 1 (latent tokens); got {height!r}, "
                                   f"{width!r}")
    grid.declared = (height, width)


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


def _grids_of_call(module, args: tuple, kwargs: dict, grid: TokenGrid) -> list[tuple[int, int]]:
    name = type(module).__name__
    if name.startswith("Flux"):
        ids = kwargs.get("img_ids")
        return [] if ids is None else [grid.flux_grid(ids)]
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


def check_raster_async(ids: torch.Tensor, grid: tuple[int, int]) -> None:
    """Fail (on the device, asynchronously) unless the (N, 3) or (B, N, 3) ``img_ids`` lie on ``grid`` in raster
    order: token t at (row₀ + t // W, col₀ + t mod W)."""
    ids = ids[0] if ids.ndim == 3 else ids
    height, width = grid
    if ids.shape[0] != height * width:
        raise InvalidArgumentError(f"{ids.shape[0]} image tokens (img_ids) cannot lie on the {height}×{width} grid")
    position = torch.arange(ids.shape[0], device=ids.device)
    rows, cols = ids[:, 1].long(), ids[:, 2].long()
    ok = ((rows - rows[:1]) == position // width) & ((cols - cols[:1]) == position % width)
    torch._assert_async(ok.all(), f"img_ids do not lie on the {height}×{width} token grid in raster order; "
                                  "declare the grid of this call with linfuse.linearize.grid.set_image_grid")


@torch._dynamo.assume_constant_result
def _grid_at_trace_time(ids: torch.Tensor) -> tuple[int, int]:
    """raster_grid of the ids being traced, as constants of the compiled graph."""
    return raster_grid(ids)


def raster_grid(ids: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of FLUX ``img_ids`` (N, 3) whose tokens are in raster order; an error otherwise. Reads the
    values on the host: forwards go through :meth:`TokenGrid.flux_grid`."""
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
