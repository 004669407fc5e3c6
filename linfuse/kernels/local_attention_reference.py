"""PyTorch references of 2-D local (neighbourhood) softmax attention with leading global tokens.

Token order: ``num_global`` global tokens (e.g. text), then the H×W image tokens in raster order. A global query sees
every key; an image query at (y, x) sees every global key and the image keys (y', x') inside its window:

* ``"circle"`` (CLEAR): (y'−y)² + (x'−x)² < radius², truncated at the borders;
* ``"square"`` (NATTEN): a (2·radius+1)² square whose centre is clamped into the grid, so a query near a border sees
  as many keys as one in the middle; lo_y = clamp(y − radius, 0, max(H − 2·radius − 1, 0)), y' ∈ [lo_y, lo_y + 2·radius]
  (likewise for x). A window at least as large as the grid covers the whole axis.
"""

import math

import torch
import torch.nn.functional as F


def window_contains(qy, qx, ky, kx, *, radius: int, window: str, grid: tuple[int, int]) -> torch.Tensor:
    """Boolean tensor (broadcast of the coordinate tensors): does query (qy, qx) see image key (ky, kx)?"""
    if window == "circle":
        return (qy - ky) ** 2 + (qx - kx) ** 2 < radius**2
    span = 2 * radius
    lo_y = (qy - radius).clamp(0, max(grid[0] - span - 1, 0))
    lo_x = (qx - radius).clamp(0, max(grid[1] - span - 1, 0))
    return (ky >= lo_y) & (ky <= lo_y + span) & (kx >= lo_x) & (kx <= lo_x + span)


def local_attention_mask(grid: tuple[int, int], radius: int, window: str, num_global: int = 0,
                         device=None) -> torch.Tensor:
    """The full (N, N) boolean visibility matrix, N = num_global + H·W. For small grids and tests only."""
    height, width = grid
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    image = window_contains(ys[:, None], xs[:, None], ys[None, :], xs[None, :], radius=radius, window=window,
                            grid=grid)
    n = num_global + height * width
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[num_global:, num_global:] = image
    return mask


def _attend(q, k, v, mask, scale):
    """softmax(q kᵀ·scale, masked) v for (B, H, Nq, d) tensors, computed in at least fp32."""
    acc = torch.promote_types(q.dtype, torch.float32)
    return F.scaled_dot_product_attention(q.to(acc), k.to(acc), v.to(acc), attn_mask=mask, scale=scale)


def local_attention_dense(q, k, v, *, grid, radius, window, num_global, scale):
    """Dense reference with a materialised N×N mask; inputs (B, H, N, d). Memory O(N²)."""
    mask = local_attention_mask(grid, radius, window, num_global, device=q.device)
    return _attend(q, k, v, mask, scale).to(q.dtype)


def key_rows(y0: int, y1: int, *, radius: int, window: str, size: int) -> tuple[int, int]:
    """First and last image row any query in rows [y0, y1] can see (inclusive)."""
    if window == "circle":
        return max(0, y0 - radius + 1), min(size - 1, y1 + radius - 1)
    top = max(size - 2 * radius - 1, 0)
    return min(max(y0 - radius, 0), top), min(min(max(y1 - radius, 0), top) + 2 * radius, size - 1)


def _band(y0: int, y1: int, *, grid, radius: int, window: str, device=None):
    """Image query rows [y0, y1] against the key rows they can see: (visibility mask, first key row, key count)."""
    width = grid[1]
    ky0, ky1 = key_rows(y0, y1, radius=radius, window=window, size=grid[0])
    cols = torch.arange(width, device=device)
    qy, qx = (t.reshape(-1) for t in torch.meshgrid(torch.arange(y0, y1 + 1, device=device), cols, indexing="ij"))
    ky, kx = (t.reshape(-1) for t in torch.meshgrid(torch.arange(ky0, ky1 + 1, device=device), cols, indexing="ij"))
    mask = window_contains(qy[:, None], qx[:, None], ky[None, :], kx[None, :], radius=radius, window=window, grid=grid)
    return mask, ky0, len(ky)


def local_attention_chunked(q, k, v, *, grid, radius, window, num_global, scale, rows_per_chunk: int = 8):
    """Memory-bounded reference for large grids; inputs (B, H, N, d).

    Image queries are processed in bands of ``rows_per_chunk`` rows against the global keys plus the key rows the
    band can see; global queries in blocks of 64 against all keys. Peak memory is O(band × visible keys).
    """
    height, width = grid
    device = q.device
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=device)
    all_keys = torch.ones(1, k.shape[-2], dtype=torch.bool, device=device)
    for start in range(0, num_global, 64):
        stop = min(start + 64, num_global)
        out[..., start:stop, :] = _attend(q[..., start:stop, :], k, v, all_keys, scale).to(q.dtype)
    for y0 in range(0, height, rows_per_chunk):
        y1 = min(y0 + rows_per_chunk, height) - 1
        image, ky0, n_keys = _band(y0, y1, grid=grid, radius=radius, window=window, device=device)
        mask = torch.cat([image.new_ones(len(image), num_global), image], dim=1)
        q_index = num_global + y0 * width + torch.arange(len(image), device=device)
        k_index = torch.cat([torch.arange(num_global, device=device),
                             num_global + ky0 * width + torch.arange(n_keys, device=device)])
        band = _attend(q[..., q_index, :], k[..., k_index, :], v[..., k_index, :], mask, scale)
        out[..., q_index, :] = band.to(q.dtype)
    return out


def count_visible_pairs(grid: tuple[int, int], radius: int, window: str, num_global: int = 0) -> int:
    """Number of (query, key) pairs the window admits: the FLOP count of local attention is 4·d·pairs per head.

    Counted per axis, in O(radius·W): a square window sees min(2r+1, size) keys along each axis; a circle, for each
    row offset dy with |dy| < r, the H − |dy| query rows times Σ_x |[x − w, x + w] ∩ [0, W)| with
    w = ⌈√(r² − dy²)⌉ − 1 the half-width of the disc at that offset."""
    height, width = grid
    pairs = num_global * (num_global + 2 * height * width)  # global queries see every key; every query sees them
    if window == "square":
        return pairs + height * min(2 * radius + 1, height) * width * min(2 * radius + 1, width)
    xs = torch.arange(width, dtype=torch.int64)
    for dy in range(-min(radius - 1, height - 1), min(radius - 1, height - 1) + 1):
        half = math.isqrt(radius * radius - dy * dy - 1)  # largest w with dy² + w² < r²
        per_row = ((xs + half).clamp(max=width - 1) - (xs - half).clamp(min=0) + 1).sum().item()
        pairs += (height - abs(dy)) * per_row
    return int(pairs)
