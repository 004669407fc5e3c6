"""The Triton local-attention kernel as PyTorch custom ops (see :mod:`linfuse.kernels.linear_attention_ops` for the
mechanism): ``linfuse::local_attention`` (q, k, v) → (O, log-sum-exp) with autograd through
``linfuse::local_attention_backward``. ``fallback`` ("auto") runs the PyTorch reference when no kernel config fits
the target, and the reference's autograd in the backward. This module imports no Triton."""

import torch
from torch import Tensor
from torch.library import custom_op

from .dispatch import compiles_only, config_from_text, config_text, on_device, triton_or_reference
from .local_attention_reference import local_attention_chunked, local_attention_dense

DENSE_REFERENCE_MAX_TOKENS = 4096  # above this the reference works in row bands instead of an N×N mask


def _triton():
    from . import local_attention_triton

    return local_attention_triton


def local_attention_reference(q, k, v, *, layout, grid, radius, window, num_global, scale):
    """The PyTorch reference in either layout: dense up to 4096 tokens, banded above."""
    options = dict(grid=tuple(grid), radius=radius, window=window, num_global=num_global, scale=scale)
    qt, kt, vt = (t.transpose(1, 2) if layout == "bnhd" else t for t in (q, k, v))
    if qt.shape[-2] <= DENSE_REFERENCE_MAX_TOKENS:
        out = local_attention_dense(qt, kt, vt, **options)
    else:
        out = local_attention_chunked(qt, kt, vt, **options)
    return out.transpose(1, 2) if layout == "bnhd" else out


def _reference_forward(q, k, v, options):
    (batch, heads, n) = (q.shape[0], q.shape[2], q.shape[1]) if options["layout"] == "bnhd" else q.shape[:3]
    out = local_attention_reference(q, k, v, **options).contiguous()
    return out, torch.zeros((batch * heads, n), device=q.device, dtype=torch.float32)  # no log-sum-exp kept


def _reference_vjp(q, k, v, d_out, options):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = local_attention_reference(*inputs, **options)
        return tuple(g.contiguous() for g in torch.autograd.grad(out, inputs, d_out))


def _options(layout, grid, radius, window, num_global, scale) -> dict:
    return dict(layout=layout, grid=tuple(grid), radius=radius, window=window, num_global=num_global, scale=scale)


def _local_attention(q: Tensor, k: Tensor, v: Tensor, layout: str, grid: list[int], radius: int, window: str,
                     num_global: int, scale: float, config: str, fallback: bool) -> tuple[Tensor, Tensor]:
    options = _options(layout, grid, radius, window, num_global, scale)
    with on_device(q):
        return triton_or_reference(
            fallback, lambda: _triton().forward(q, k, v, config=config_from_text(config), **options),
            lambda: _reference_forward(q, k, v, options))


local_attention_op = custom_op("linfuse::local_attention", _local_attention, mutates_args=())


@local_attention_op.register_fake
def _(q, k, v, layout, grid, radius, window, num_global, scale, config, fallback):
    if compiles_only(q):
        return _local_attention(q, k, v, layout, grid, radius, window, num_global, scale, config, fallback)
    batch, heads, n = (q.shape[0], q.shape[2], q.shape[1]) if layout == "bnhd" else q.shape[:3]
    return q.new_empty(q.shape), q.new_empty((batch * heads, n), dtype=torch.float32)


def _local_attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor,
                              layout: str, grid: list[int], radius: int, window: str, num_global: int, scale: float,
                              config: str, fallback: bool) -> tuple[Tensor, Tensor, Tensor]:
    options = _options(layout, grid, radius, window, num_global, scale)
    with on_device(q):
        return triton_or_reference(
            fallback, lambda: _triton().backward(q, k, v, out, lse, d_out, config=config_from_text(config), **options),
            lambda: _reference_vjp(q, k, v, d_out, options))


local_attention_backward_op = custom_op("linfuse::local_attention_backward", _local_attention_backward,
                                        mutates_args=())


@local_attention_backward_op.register_fake
def _(q, k, v, out, lse, d_out, layout, grid, radius, window, num_global, scale, config, fallback):
    if compiles_only(q):
        return _local_attention_backward(q, k, v, out, lse, d_out, layout, grid, radius, window, num_global, scale,
                                         config, fallback)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, *options = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.options = options


def _backward(ctx, d_out, _d_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if d_out is None:
        d_out = torch.zeros_like(out)
    grads = local_attention_backward_op(q, k, v, out, lse, d_out, *ctx.options)
    return (*grads, *(None for _ in ctx.options))


local_attention_op.register_autograd(_backward, setup_context=_setup_context)


def local_attention_triton(q, k, v, *, layout, grid, radius, window, num_global, scale, config=None,
                           fallback: bool = False) -> Tensor:
    """Triton path of :func:`linfuse.kernels.local_attention` (arguments validated there; d_v == d_k); ``config``
    forces the forward's and the backward's config (tests)."""
    return local_attention_op(q, k, v, layout, list(grid), int(radius), window, int(num_global), float(scale),
                              config_text(config), fallback)[0]
