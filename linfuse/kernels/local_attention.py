"""Public entry point of 2-D local softmax attention, with argument checks and backend dispatch."""

import math
import threading
from contextlib import contextmanager

import torch

from ..errors import InvalidArgumentError
from . import local_attention_ops as ops
from .dispatch import resolve_backend, use_triton
from .linear_attention import LAYOUTS

WINDOWS = ("circle", "square")
BACKEND_ENV = "LINFUSE_LOCAL_ATTENTION_BACKEND"
MAX_TRITON_HEAD_DIM = 128  # one padded 128-wide feature block per tile
_PLANNING = threading.local()


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: tuple[int, int],
    radius: int,
    window: str = "circle",
    num_global: int = 0,
    scale: float | None = None,
    layout: str = "bnhd",
    backend: str | None = None,
) -> torch.Tensor:
    r"""Softmax attention restricted to a 2-D window on the image tokens, plus global tokens.

    The sequence is ``num_global`` global tokens (text) followed by the H×W image tokens in raster order,
    N = num_global + H·W. ``O_i = Σ_{j∈W(i)} softmax_j(scale · q_i·k_j) v_j`` where W(i) is every key for a global
    query, and the global keys plus the image keys inside the window for an image query:

    * ``window="circle"`` (CLEAR): (y'−y)² + (x'−x)² < radius², truncated at the borders;
    * ``window="square"`` (NATTEN): a (2·radius+1)² square whose centre is clamped into the grid.

    Args:
        q, k, v: (B, N, H, d) for layout "bnhd" or (B, H, N, d) for "bhnd"; one dtype, d_v = d_k.
        grid: (H, W) of the image tokens.
        radius: window radius in tokens, >= 1.
        num_global: leading tokens every query sees and that see everything, >= 0.
        scale: softmax scale; default 1/√d.
        backend: "auto" (Triton on CUDA, PyTorch otherwise), "reference" or "triton"; None reads
            LINFUSE_LOCAL_ATTENTION_BACKEND. Inside :func:`output_only` (the memory planner's traces) a call on
            the meta device allocates only the output, as the Triton kernel does. The reference materialises an
            N×N mask up to 4096 tokens and works in bands of image rows above that, so memory stays
            O(rows × W × window) on any grid.
    """
    _check(q, k, v, grid=grid, radius=radius, window=window, num_global=num_global, layout=layout)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise InvalidArgumentError(f"scale must be a positive finite number; got {scale!r}")
    options = dict(grid=tuple(grid), radius=int(radius), window=window, num_global=int(num_global), scale=scale)
    if q.device.type == "meta" and getattr(_PLANNING, "active", False):  # a memory trace: the kernel's output
        return torch.empty_like(q)
    backend = resolve_backend(backend, BACKEND_ENV)
    if use_triton(backend, q, q.shape[-1], MAX_TRITON_HEAD_DIM):
        return ops.local_attention_triton(q, k, v, layout=layout, fallback=backend != "triton", **options)
    return ops.local_attention_reference(q, k, v, layout=layout, **options)


@contextmanager
def output_only():
    """Meta-device calls in this thread allocate only their output, as the fused kernel does (memory traces)."""
    before = getattr(_PLANNING, "active", False)
    _PLANNING.active = True
    try:
        yield
    finally:
        _PLANNING.active = before


def _check(q, k, v, *, grid, radius, window, num_global, layout) -> int:
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if window not in WINDOWS:
        raise InvalidArgumentError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}")
    if not isinstance(radius, int) or radius < 1:
        raise InvalidArgumentError(f"radius must be an integer >= 1; got {radius!r}")
    if not isinstance(num_global, int) or num_global < 0:
        raise InvalidArgumentError(f"num_global must be an integer >= 0; got {num_global!r}")
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(g, int) and g >= 1 for g in grid)):
        raise InvalidArgumentError(f"grid must be (height, width) with positive integers; got {grid!r}")
    seq_dim = LAYOUTS[layout]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise InvalidArgumentError(f"{name} must be a 4-D floating-point tensor in layout {layout!r}")
    if not (q.shape == k.shape == v.shape):
        raise InvalidArgumentError(f"q, k and v must have one shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                                   f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        raise InvalidArgumentError("q, k and v must share one dtype and one device")
    expected = num_global + grid[0] * grid[1]
    if q.shape[seq_dim] != expected:
        raise InvalidArgumentError(
            f"the sequence has {q.shape[seq_dim]} tokens but num_global + height·width = {num_global} + "
            f"{grid[0]}·{grid[1]} = {expected}; pass the grid of the image tokens"
        )
    return seq_dim
