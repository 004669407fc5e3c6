"""One FLUX image across processes with CLEAR local attention: each rank runs the transformer on a band of token rows.

``patch_parallel(pipe)`` comes here for a FLUX pipeline. Each transformer call gets this rank's band of image-token
rows (``hidden_states`` and ``img_ids``, so RoPE is the band's own); the text tokens are replicated, every rank
computing the same text stream. Everything but attention is token-wise. Inside each CLEAR layer, for a band of rows
[y₀, y₁) of an H×W grid, text T tokens, radius r:

* image queries see the text keys, the (optional) pooled tokens of the whole image (all-gathered: N/f² tokens),
  and the image keys of their circular window, which lie in rows [y₀ − r + 1, y₁ + r − 1]: the r − 1 rows above and
  below the band come from the neighbouring ranks (a halo of keys and values, after RoPE);
* text queries see every key. Each rank attends them to its own image keys (rank 0 also to the text keys) with a
  running maximum m, sum l = Σ exp(s − m) and numerator o = Σ exp(s − m) v, and the ranks combine exactly::

      M = max_r m_r,    out = Σ_r exp(m_r − M)·o_r  /  Σ_r exp(m_r − M)·l_r

* proportional attention's length is the whole image's N = T + H·W.

The sampler, the VAE and everything else see full latents; the transformer's output bands are gathered. Traffic per
layer: 2·(r − 1) rows of keys and values, the pooled tokens, and T×(d + 2) numbers per head for the text queries.
"""

import torch
import torch.distributed as dist

from ..errors import InvalidArgumentError
from ..kernels import local_attention
from ..linearize.clear import ClearAttnProcessor
from ..linearize.grid import attach_token_grid
from .patch_parallel import band_bounds, check_one_device, gather_along, neighbour_rows

KEY_CHUNK = 8192  # image keys per step of the text queries' running softmax


def row_halo(tokens: torch.Tensor, width: int, rows: int) -> tuple[torch.Tensor, int, int]:
    """(B, band·W, …) image tokens with ``rows`` rows of the neighbouring bands above and below (none at the image
    border); returns them and how many rows were added above and below."""
    if rows == 0:
        return tokens, 0, 0
    above, below = neighbour_rows(tokens, rows * width, 1)
    parts = [part for part in (above, tokens, below) if part is not None]
    return torch.cat(parts, dim=1), 0 if above is None else rows, 0 if below is None else rows


def text_query_attention(q: torch.Tensor, keys: list[tuple[torch.Tensor, torch.Tensor]], scale: float) -> torch.Tensor:
    """softmax attention of (B, T, h, d) queries over the keys of every rank, each rank holding ``keys`` (a list of
    (k, v) parts), combined exactly across ranks (see the module docstring); fp32, returns q's dtype."""
    query = q.float().transpose(1, 2)  # (B, h, T, d)
    batch, heads, count, dim = query.shape
    running = torch.full((batch, heads, count, 1), -torch.inf, dtype=torch.float32, device=q.device)
    total = torch.zeros_like(running)
    numerator = torch.zeros(batch, heads, count, dim, dtype=torch.float32, device=q.device)
    for k, v in keys:
        for start in range(0, k.shape[1], KEY_CHUNK):
            kc = k[:, start:start + KEY_CHUNK].float().transpose(1, 2)
            vc = v[:, start:start + KEY_CHUNK].float().transpose(1, 2)
            scores = query @ kc.transpose(-1, -2) * scale
            peak = torch.maximum(running, scores.amax(-1, keepdim=True))
            weights = torch.exp(scores - peak)
            rescale = torch.exp(running - peak)
            total = total * rescale + weights.sum(-1, keepdim=True)
            numerator = numerator * rescale + weights @ vc
            running = peak
    peak = running.clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    rescale = torch.exp(running - peak).nan_to_num(0.0)  # a rank with no keys: exp(−inf − M) = 0
    total, numerator = total * rescale, numerator * rescale
    dist.all_reduce(total)
    dist.all_reduce(numerator)
    return (numerator / total).transpose(1, 2).to(q.dtype)


class BandState:
    """The image grid of the transformer call under way and this rank's rows of it."""

    def __init__(self):
        self.height = self.width = self.start = self.end = 0
        self.bands: list[tuple[int, int]] = []  # every rank's [start, end) rows

    def pooled_sizes(self, pool: int) -> list[int]:
        """Pooled tokens of every rank's band: its whole pool×pool blocks."""
        return [(end - start) // pool * (self.width // pool) for start, end in self.bands]


def window_attention_forward(processor, band: BandState):
    """A replacement for ``processor.window_attention`` (q, k, v of [text; band]) that sees the whole image."""
    halo_rows = processor.radius - 1  # a circle of radius r reaches r − 1 rows up and down

    def window_attention(q, k, v, text: int, grid: tuple[int, int]) -> torch.Tensor:
        rows, width = grid
        if (rows, width) != (band.end - band.start, band.width):
            raise InvalidArgumentError(f"a CLEAR layer got a {rows}×{width} band, expected "
                                       f"{band.end - band.start}×{band.width}: call the whole transformer")
        scale = processor.softmax_scale(q.shape[-1], text + band.height * band.width)
        image_k, image_v = k[:, text:], v[:, text:]
        dim = k.shape[-1]
        wide_kv, above, below = row_halo(torch.cat([image_k, image_v], -1), width, halo_rows)  # one exchange
        wide_k, wide_v = wide_kv[..., :dim], wide_kv[..., dim:]
        zeros = q.new_zeros(q.shape[0], (above + below) * width, *q.shape[2:])
        wide_q = torch.cat([q[:, :text], zeros[:, :above * width], q[:, text:], zeros[:, above * width:]], 1)
        wide_k, wide_v = torch.cat([k[:, :text], wide_k], 1), torch.cat([v[:, :text], wide_v], 1)
        pooled = 0
        if processor.pool:
            pooled_kv = gather_along(torch.cat([processor.pool_tokens(image_k, grid),
                                                processor.pool_tokens(image_v, grid)], -1), 1,
                                    band.pooled_sizes(processor.pool))
            pooled_k, pooled_v = pooled_kv[..., :dim], pooled_kv[..., dim:]
            pooled = pooled_k.shape[1]
            wide_q = torch.cat([wide_q[:, :text], q.new_zeros(pooled_k.shape), wide_q[:, text:]], 1)
            wide_k = torch.cat([wide_k[:, :text], pooled_k, wide_k[:, text:]], 1)
            wide_v = torch.cat([wide_v[:, :text], pooled_v, wide_v[:, text:]], 1)
        wide_grid = (above + rows + below, width)
        out = local_attention(wide_q, wide_k, wide_v, grid=wide_grid, radius=processor.radius,
                              num_global=text + pooled, scale=scale)
        first = text + pooled + above * width
        image_out = out[:, first:first + rows * width]
        if not text:
            return image_out
        parts = [(image_k, image_v)] if dist.get_rank() else [(k[:, :text], v[:, :text]), (image_k, image_v)]
        return torch.cat([text_query_attention(q[:, :text], parts, scale), image_out], 1)

    return window_attention


def flux_bands(height: int, parts: int, align: int, min_rows: int) -> list[tuple[int, int]]:
    """[start, end) token rows of ``parts`` bands: :func:`band_bounds` over the rows whole pooling blocks of
    ``align`` cover, the last band taking the rest too; each at least ``min_rows`` (the halo) and 1."""
    bounds = band_bounds(height - height % align, parts, align)
    bounds[-1] = (bounds[-1][0], height)
    thinnest = min(end - start for start, end in bounds)
    if thinnest < max(min_rows, 1):
        raise InvalidArgumentError(f"the {height}-row token grid split {parts} ways gives bands of {thinnest} "
                                   f"rows, fewer than the {min_rows} halo rows the window radius needs; use a "
                                   "larger image or fewer processes")
    return bounds


def check_flux_transformer(transformer) -> list:
    """Every attention of the transformer must be CLEAR's (softmax layers would need the whole sequence)."""
    if type(transformer).__name__ != "FluxTransformer2DModel":
        raise InvalidArgumentError(f"patch parallelism for DiTs supports FLUX transformers (RoPE from img_ids); "
                                   f"this pipeline has {type(transformer).__name__}")
    layers = [m for m in transformer.modules() if hasattr(m, "processor") and hasattr(m, "to_q")]
    others = sorted({type(m.processor).__name__ for m in layers if not isinstance(m.processor, ClearAttnProcessor)})
    if others:
        raise InvalidArgumentError(f"patch parallelism on FLUX needs every attention layer converted to clear; some "
                                   f"run {others}. Load the model with method='clear' first.")
    return [m.processor for m in layers]


def flux_patch_parallel(pipe, bounds: dict):
    """Install the band split on ``pipe.transformer``; each call sets ``bounds["rows"]`` to this rank's token rows.
    Returns the function that removes it."""
    transformer = pipe.transformer
    processors = check_flux_transformer(transformer)
    band = BandState()
    grid = attach_token_grid(transformer)
    align = max([p.pool for p in processors] + [1])
    halo = max(p.radius for p in processors) - 1
    for processor in processors:
        processor.window_attention = window_attention_forward(processor, band)

    def split(module, args, kwargs):
        if args or kwargs.get("controlnet_block_samples") is not None \
                or kwargs.get("controlnet_single_block_samples") is not None:
            raise InvalidArgumentError("patch parallelism calls the FLUX transformer with keyword arguments and no "
                                       "ControlNet residuals")
        ids = kwargs["img_ids"]
        check_one_device(*(kwargs.get(name) for name in ("hidden_states", "encoder_hidden_states", "img_ids",
                                                         "txt_ids", "timestep", "pooled_projections")),
                         expected=transformer.device)
        band.height, band.width = grid.flux_grid(ids)  # no host read once known (see linearize.grid)
        band.bands = flux_bands(band.height, dist.get_world_size(), align, halo)
        band.start, band.end = band.bands[dist.get_rank()]
        bounds["rows"] = (band.start, band.end)
        tokens = slice(band.start * band.width, band.end * band.width)
        local_ids = ids[..., tokens, :]
        grid.assume(local_ids, (band.end - band.start, band.width))
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"][:, tokens], "img_ids": local_ids}

    def gather(module, args, kwargs, output):
        sizes = [(end - start) * band.width for start, end in band.bands]
        if isinstance(output, tuple):
            return (gather_along(output[0].contiguous(), 1, sizes), *output[1:])
        output.sample = gather_along(output.sample.contiguous(), 1, sizes)
        return output

    handles = [transformer.register_forward_pre_hook(split, with_kwargs=True, prepend=True),
               transformer.register_forward_hook(gather, with_kwargs=True)]

    def undo():
        for handle in handles:
            handle.remove()
        for processor in processors:
            del processor.window_attention

    return undo
