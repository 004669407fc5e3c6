"""One image across processes: each rank runs the UNet on a band of latent rows; the result equals one process's.

Under ``torchrun`` (any ``torch.distributed`` backend; gloo on CPUs), ``with patch_parallel(pipe): pipe(...)``
makes every UNet call work on this rank's band of rows and gather the bands of the output, so the sampler, the
VAE and everything else see full latents, unchanged. Inside the UNet, what couples rows is made exact:

* convolutions with k×k kernels get the k//2 rows above and below their band from the neighbouring ranks (zeros at
  the image border), then convolve without vertical padding (stride 1 or 2);
* GroupNorm statistics are all-reduced: Σx, Σx² and the count per (sample, group), in float64;
* linear attention all-reduces its per-head state [Σ_j φ(k_j) v_jᵀ ‖ Σ_j φ(k_j)] (d×(d+1) numbers per head) and
  the token count, then applies O_i = φ(q_i)ᵀ S/N ÷ (φ(q_i)ᵀ z/N + ε) to its own queries.

Token-wise parts (projections, layer norms, feed-forwards, cross-attention to the text) need nothing. Bands are
multiples of 2^(number of down-sampling blocks) rows, so every level splits at the same place. Memory per rank is
the UNet activations of its band; traffic per layer is a few rows of halo plus the attention states.
"""

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..kernels import linear_attention_readout, linear_attention_state
from ..kernels.linear_attention_reference import default_chunk_size
from ..linearize.registry import processor_classes
from .families import is_dit

SUPPORTED_METHODS = ("linfusion", "sana")  # the built-in ones with a chunk form and no local term (for messages)


def band_bounds(height: int, parts: int, align: int) -> list[tuple[int, int]]:
    """[start, end) rows of ``parts`` bands of ``height`` rows, each a multiple of ``align``, sizes within ``align``."""
    if height % align:
        raise InvalidArgumentError(f"a grid of {height} rows must be a multiple of {align} to split into bands")
    units = height // align
    if units < parts:
        raise InvalidArgumentError(f"a grid of {height} rows gives {units} bands of {align} rows, fewer than the "
                                   f"{parts} processes; use a larger image or fewer processes")
    sizes = [units // parts + (1 if r < units % parts else 0) for r in range(parts)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size * align))
        start += size * align
    return bounds


def gather_along(local: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor:
    """Every rank's tensor joined along ``dim`` in rank order; ``sizes`` are every rank's sizes along ``dim``, known
    from the band arithmetic (so no collective of sizes and no host read). Parts are padded to the largest for
    all_gather and trimmed back."""
    if len(sizes) != dist.get_world_size() or local.shape[dim] != sizes[dist.get_rank()]:
        raise InvalidArgumentError(f"gather_along: this rank holds {local.shape[dim]} entries along dim {dim}, the "
                                   f"band sizes say {sizes}")
    pad = list(local.shape)
    pad[dim] = max(sizes) - local.shape[dim]
    padded = torch.cat([local, local.new_zeros(pad)], dim=dim).contiguous()
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g.narrow(dim, 0, size) for g, size in zip(gathered, sizes, strict=True)], dim=dim)


def check_one_device(*tensors, expected: torch.device | None = None) -> None:
    """Refuse inputs on different devices (collectives and kernels work on one device per rank)."""
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if expected is not None:
        devices.add(torch.device(expected))
    if len(devices) > 1:
        raise InvalidArgumentError(f"patch parallelism needs the inputs and the model on one device; got "
                                   f"{sorted(str(d) for d in devices)}: move them with .to(device) first")


def neighbour_rows(x: torch.Tensor, rows: int, dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The last ``rows`` entries along ``dim`` of the rank above and the first of the rank below (None at the
    image's top and bottom): one all_gather of every rank's two edges."""
    rank, world = dist.get_rank(), dist.get_world_size()
    edges = torch.cat([x.narrow(dim, 0, rows), x.narrow(dim, x.shape[dim] - rows, rows)], dim=dim).contiguous()
    gathered = [torch.empty_like(edges) for _ in range(world)]
    dist.all_gather(gathered, edges)
    above = gathered[rank - 1].narrow(dim, rows, rows) if rank > 0 else None
    below = gathered[rank + 1].narrow(dim, 0, rows) if rank + 1 < world else None
    return above, below


def _halo(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with ``rows`` rows of the neighbouring bands above and below (zeros at the image border)."""
    above, below = neighbour_rows(x, rows, 2)
    zeros = torch.zeros_like(x[:, :, :rows])
    return torch.cat([zeros if above is None else above, x, zeros if below is None else below], dim=2)


def _conv_forward(conv: nn.Conv2d):
    rows, cols = conv.padding

    def forward(x: torch.Tensor) -> torch.Tensor:
        padded = _halo(x, rows)
        return F.conv2d(padded, conv.weight, conv.bias, conv.stride, (0, cols), conv.dilation, conv.groups)

    return forward


def _group_norm_forward(norm: nn.GroupNorm):
    def forward(x: torch.Tensor) -> torch.Tensor:
        batch, groups = x.shape[0], norm.num_groups
        grouped = x.reshape(batch, groups, -1)
        wide = grouped.to(torch.float64)
        sums = torch.stack([wide.sum(-1), wide.square().sum(-1),
                            torch.full_like(wide[..., 0], grouped.shape[-1])])
        dist.all_reduce(sums)
        mean = sums[0] / sums[2]
        var = (sums[1] / sums[2] - mean.square()).clamp_min(0)
        out = ((wide - mean[..., None]) * torch.rsqrt(var + norm.eps)[..., None]).to(x.dtype).reshape_as(x)
        if norm.affine:
            shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
            out = out * norm.weight.view(shape) + norm.bias.view(shape)
        return out

    return forward


def _attend_forward(processor):
    feature_map, eps = processor.chunk_form()

    def attend(q, k, v, x):
        chunk = default_chunk_size(k.shape[0], k.shape[2], k.shape[3], k.shape[1])
        state, key_sum = linear_attention_state(k, v, feature_map=feature_map, chunk_size=chunk)  # fp32 sums
        count = state.new_full((*state.shape[:-1], 1), k.shape[1])  # this band's key count, on the data's device
        packed = torch.cat([state, key_sum.unsqueeze(-1), count], dim=-1)  # [S ‖ z ‖ n], (B, heads, d, d + 2)
        dist.all_reduce(packed)
        packed = packed[..., :-1] / packed[..., -1:]
        return linear_attention_readout(q, packed[..., :-1], packed[..., -1], feature_map=feature_map, eps=eps,
                                        chunk_size=chunk)

    return attend


def _splits_by_state(processor) -> bool:
    """A normalised linear attention (its ``chunk_form``) with no local term: its state is all a band needs."""
    return isinstance(processor, processor_classes()) and bool(getattr(processor, "chunk_form", lambda: None)()) \
        and not getattr(processor, "local_rows", 0)


def _check_unet(unet) -> list:
    layers = [m for n, m in unet.named_modules() if n.endswith("attn1")]
    unsupported = [type(m.processor).__name__ for m in layers if not _splits_by_state(m.processor)]
    if unsupported:
        raise InvalidArgumentError(
            f"patch parallelism needs every self-attention layer converted to {' or '.join(SUPPORTED_METHODS)}; "
            f"{len(unsupported)} layers run {sorted(set(unsupported))}. Linearize the model with one of them first.")
    return [m.processor for m in layers]


@contextmanager
def patch_parallel(pipe):
    """Split every UNet call of ``pipe`` across the ranks of the default process group (see the module docstring);
    a FLUX pipeline with CLEAR attention splits its transformer calls (:mod:`.patch_parallel_dit`). Yields the
    band of this rank: {"rows": (start, end)}, latent rows for a UNet, token rows for FLUX."""
    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgumentError("patch_parallel needs torch.distributed initialised: launch with torchrun (or "
                                   "accelerate launch) and call torch.distributed.init_process_group first")
    if is_dit(pipe):
        yield from _flux_patch_parallel(pipe)
        return
    unet = pipe.unet
    processors = _check_unet(unet)
    align = 2 ** sum(1 for block in unet.down_blocks if getattr(block, "downsamplers", None))
    patched = [(c, _conv_forward(c)) for c in unet.modules() if isinstance(c, nn.Conv2d) and c.kernel_size[0] > 1]
    patched += [(n, _group_norm_forward(n)) for n in unet.modules() if isinstance(n, nn.GroupNorm)]
    patched += [(p, _attend_forward(p)) for p in processors]
    for module, forward in patched:
        setattr(module, "attend" if module in processors else "forward", forward)
    bounds = {}

    def split(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        rank, world = dist.get_rank(), dist.get_world_size()
        if sample.shape[-1] % align:
            raise InvalidArgumentError(f"latent width {sample.shape[-1]} must be a multiple of {align}")
        check_one_device(sample, kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None),
                         expected=unet.device)
        everyone = band_bounds(sample.shape[-2], world, align)
        start, end = everyone[rank]
        bounds["rows"] = (start, end)
        bounds["sizes"] = [b - a for a, b in everyone]
        band = sample[:, :, start:end]
        return ((band, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": band})

    def gather(module, args, kwargs, output):
        first = output[0] if isinstance(output, tuple) else output.sample
        full = gather_along(first.contiguous(), 2, bounds["sizes"])
        if isinstance(output, tuple):
            return (full, *output[1:])
        output.sample = full
        return output

    handles = [unet.register_forward_pre_hook(split, with_kwargs=True),
               unet.register_forward_hook(gather, with_kwargs=True)]
    try:
        yield bounds  # this rank's band ("rows") and every rank's band height ("sizes")
    finally:
        for handle in handles:
            handle.remove()
        for module, _ in patched:
            if module in processors:
                del module.attend
            else:
                del module.forward


def _flux_patch_parallel(pipe):
    from .patch_parallel_dit import flux_patch_parallel

    bounds = {}
    undo = flux_patch_parallel(pipe, bounds)
    try:
        yield bounds
    finally:
        undo()
