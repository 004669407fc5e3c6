"""The Triton linear-attention kernels as PyTorch custom ops, so that ``torch.compile(fullgraph=True)`` sees each
launch as one opaque op instead of tracing into Triton's launcher.

    linfuse::linear_attention           (q, k, v) → (O, ΣS, Σz)   with autograd: linfuse::linear_attention_backward
    linfuse::linear_attention_state     (k, v)    → (ΣS, Σz)      the state kernel alone (fp32 sums)
    linfuse::linear_attention_readout   (q, S, z) → O             the output kernel alone (mean-form S, z)

Each op's implementation is the launcher of :mod:`linfuse.kernels.linear_attention_triton` (CUDA tensors, or CPU
tensors under Triton's interpreter), run under the tensors' own device; a trace runs only the shape functions, so
config choice (compiling candidates, reading the device) happens at the first real call and is cached. ``fallback``
("auto") runs the PyTorch reference when no kernel config fits the target; the reference's autograd is then the
backward. Under the stand-in driver a real meta tensor takes the launcher's compile-only path (readiness checks).
This module imports no Triton: importing it registers the ops before any trace.
"""

import torch
from torch import Tensor
from torch.library import custom_op

from .dispatch import compiles_only, config_from_text, config_text, on_device, triton_or_reference
from .linear_attention_reference import (
    default_chunk_size,
    linear_attention_readout_reference,
    linear_attention_reference,
    linear_attention_state_reference,
)

LAYOUT_SEQ_DIM = {"bnhd": 1, "bhnd": 2}


def _triton():
    from . import linear_attention_triton

    return linear_attention_triton


def _sizes(q: Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, heads, tokens) of a tensor in ``layout``."""
    seq_dim = LAYOUT_SEQ_DIM[layout]
    return q.shape[0], q.shape[3 - seq_dim], q.shape[seq_dim]


def _reference(q, k, v, feature_map: str, eps: float, layout: str):
    seq_dim = LAYOUT_SEQ_DIM[layout]
    batch, heads, _ = _sizes(q, layout)
    chunk = default_chunk_size(batch, heads, max(q.shape[-1], v.shape[-1]), max(q.shape[seq_dim], 1))
    return linear_attention_reference(q, k, v, feature_map=feature_map, eps=eps, seq_dim=seq_dim, chunk_size=chunk)


def _reference_forward(q, k, v, feature_map, eps, layout):
    s, z = linear_attention_state_reference(k, v, feature_map=feature_map, seq_dim=LAYOUT_SEQ_DIM[layout])
    return _reference(q, k, v, feature_map, eps, layout), s.flatten(0, 1), z.flatten(0, 1)


def _reference_vjp(q, k, v, d_out, feature_map, eps, layout):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = _reference(*inputs, feature_map, eps, layout)
        return tuple(g.contiguous() for g in torch.autograd.grad(out, inputs, d_out))


def _linear_attention(q: Tensor, k: Tensor, v: Tensor, feature_map: str, eps: float, layout: str, config: str,
                        fallback: bool) -> tuple[Tensor, Tensor, Tensor]:
    with on_device(q):
        return triton_or_reference(
            fallback,
            lambda: _triton().forward(q, k, v, feature_map=feature_map, eps=eps, layout=layout,
                                      config=config_from_text(config)),
            lambda: _reference_forward(q, k, v, feature_map, eps, layout))


linear_attention_op = custom_op("linfuse::linear_attention", _linear_attention, mutates_args=())


@linear_attention_op.register_fake
def _(q, k, v, feature_map, eps, layout, config, fallback):
    if compiles_only(q):
        return _linear_attention(q, k, v, feature_map, eps, layout, config, fallback)
    batch, heads, _ = _sizes(q, layout)
    dk, dv = q.shape[-1], v.shape[-1]
    f32 = dict(dtype=torch.float32)
    return q.new_empty(q.shape[:-1] + (dv,)), q.new_empty((batch * heads, dk, dv), **f32), q.new_empty(
        (batch * heads, dk), **f32)


def _linear_attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, s: Tensor, z: Tensor, d_out: Tensor,
                                 feature_map: str, eps: float, layout: str, config: str,
                                 fallback: bool) -> tuple[Tensor, Tensor, Tensor]:
    with on_device(q):
        return triton_or_reference(
            fallback,
            lambda: _triton().backward(q, k, v, out, s, z, d_out, feature_map=feature_map, eps=eps, layout=layout,
                                       config=config_from_text(config)),
            lambda: _reference_vjp(q, k, v, d_out, feature_map, eps, layout))


linear_attention_backward_op = custom_op("linfuse::linear_attention_backward", _linear_attention_backward,
                                         mutates_args=())


@linear_attention_backward_op.register_fake
def _(q, k, v, out, s, z, d_out, feature_map, eps, layout, config, fallback):
    if compiles_only(q):
        return _linear_attention_backward(q, k, v, out, s, z, d_out, feature_map, eps, layout, config,
                                                     fallback)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, *options = inputs
    out, s, z = output
    ctx.save_for_backward(q, k, v, out, s, z)
    ctx.options = options


def _backward(ctx, d_out, _d_s, _d_z):
    q, k, v, out, s, z = ctx.saved_tensors
    if d_out is None:
        d_out = torch.zeros_like(out)
    grads = linear_attention_backward_op(q, k, v, out, s, z, d_out, *ctx.options)
    return (*grads, *(None for _ in ctx.options))


linear_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _linear_attention_state(k: Tensor, v: Tensor, feature_map: str, layout: str, config: str,
                              fallback: bool) -> tuple[Tensor, Tensor]:
    with on_device(k):
        return triton_or_reference(
            fallback,
            lambda: _triton().state(k, v, feature_map=feature_map, layout=layout, config=config_from_text(config)),
            lambda: linear_attention_state_reference(k, v, feature_map=feature_map, seq_dim=LAYOUT_SEQ_DIM[layout]))


linear_attention_state_op = custom_op("linfuse::linear_attention_state", _linear_attention_state, mutates_args=())


@linear_attention_state_op.register_fake
def _(k, v, feature_map, layout, config, fallback):
    if compiles_only(k):
        return _linear_attention_state(k, v, feature_map, layout, config, fallback)
    batch, heads, _ = _sizes(k, layout)
    return (k.new_empty((batch, heads, k.shape[-1], v.shape[-1]), dtype=torch.float32),
            k.new_empty((batch, heads, k.shape[-1]), dtype=torch.float32))


def _linear_attention_readout(q: Tensor, s: Tensor, z: Tensor, feature_map: str, eps: float, layout: str,
                                config: str, fallback: bool) -> Tensor:
    with on_device(q):
        return triton_or_reference(
            fallback,
            lambda: _triton().readout(q, s, z, feature_map=feature_map, eps=eps, layout=layout,
                                      config=config_from_text(config)),
            lambda: linear_attention_readout_reference(q, s, z, feature_map=feature_map, eps=eps,
                                                       seq_dim=LAYOUT_SEQ_DIM[layout]))


linear_attention_readout_op = custom_op("linfuse::linear_attention_readout", _linear_attention_readout,
                                        mutates_args=())


@linear_attention_readout_op.register_fake
def _(q, s, z, feature_map, eps, layout, config, fallback):
    if compiles_only(q):
        return _linear_attention_readout(q, s, z, feature_map, eps, layout, config, fallback)
    return q.new_empty(q.shape[:-1] + (s.shape[-1],))


def linear_attention_triton(q, k, v, *, feature_map: str, eps: float, layout: str, config: dict | None = None,
                            fallback: bool = False) -> Tensor:
    """Triton path of :func:`linfuse.kernels.linear_attention` (arguments validated there); ``config`` forces one
    config for all four kernels (tests)."""
    return linear_attention_op(q, k, v, feature_map, float(eps), layout, config_text(config), fallback)[0]


def linear_attention_state_triton(k, v, *, feature_map: str, layout: str, fallback: bool = False):
    return linear_attention_state_op(k, v, feature_map, layout, "", fallback)


def linear_attention_readout_triton(q, s, z, *, feature_map: str, eps: float, layout: str, fallback: bool = False):
    return linear_attention_readout_op(q, s, z, feature_map, float(eps), layout, "", fallback)
