"""Public entry point of non-causal normalised linear attention, with argument checks and backend dispatch."""

import torch

from ..errors import InvalidArgumentError
from . import linear_attention_ops as ops
from .dispatch import resolve_backend, use_triton
from .feature_maps import FEATURE_MAPS
from .linear_attention_reference import (
    default_chunk_size,
    linear_attention_readout_reference,
    linear_attention_reference,
    linear_attention_state_reference,
)

LAYOUTS = {"bnhd": 1, "bhnd": 2}
BACKEND_ENV = "LINFUSE_LINEAR_ATTENTION_BACKEND"
DEFAULT_EPS = 1e-4
MAX_TRITON_HEAD_DIM = 256  # the kernels tile d_k and d_v; above this the reference runs


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    feature_map: str = "elu1",
    eps: float = DEFAULT_EPS,
    layout: str = "bnhd",
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Non-causal normalised linear attention, in the *mean* form LinFusion uses.

    For every batch and head, with N the number of keys and φ the feature map::

        S   = (1/N) Σ_j φ(k_j) v_jᵀ          (d_k × d_v, fp32)
        z   = (1/N) Σ_j φ(k_j)               (d_k,       fp32)
        O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps)

    The 1/N factors cancel between numerator and denominator except against ``eps``: this equals the *sum* form
    ``φ(q_i)ᵀ ΣS / (φ(q_i)ᵀ Σz + eps·N)``. LinFusion's published checkpoints use the mean form with eps = 1e-4, so
    eps is relative to a mean of φ(k) and the result does not depend on resolution. To reproduce a sum-form model
    with eps', pass ``eps = eps' / N``.

    Args:
        q: queries, (B, N_q, H, d_k) for layout "bnhd" or (B, H, N_q, d_k) for "bhnd".
        k: keys, same layout, (…, N, …, d_k).
        v: values, same layout, (…, N, …, d_v).
        feature_map: "elu1" (ELU + 1), "relu" or "identity".
        eps: added to the (mean-form) normaliser; >= 0.
        layout: "bnhd" or "bhnd"; strides are honoured, no transposed copy is made.
        chunk_size: tokens processed at once; None picks about 4 MiB of fp32 per chunk.
        backend: "auto", "reference" or "triton"; None reads the environment variable
            LINFUSE_LINEAR_ATTENTION_BACKEND (default "auto"). "auto" runs the Triton kernels on CUDA tensors
            (fp16/bf16/fp32, head dims up to 256) and the PyTorch reference otherwise. "triton" on CPU tensors needs
            TRITON_INTERPRET=1 set before linfuse is imported (Triton's interpreter: correct but slow).

    Returns:
        Output of q's dtype and layout, last dimension d_v. State and accumulation are fp32 for fp16/bf16/fp32
        inputs (fp64 for fp64); memory beyond the output is one fp32 chunk plus the state.
    """
    seq_dim = _check_inputs(q, k, v, feature_map=feature_map, eps=eps, layout=layout)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise InvalidArgumentError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    head_dim = max(q.shape[-1], v.shape[-1])
    backend = resolve_backend(backend, BACKEND_ENV)
    if use_triton(backend, q, head_dim, MAX_TRITON_HEAD_DIM):  # the Triton kernels tile on their own
        return ops.linear_attention_triton(q, k, v, feature_map=feature_map, eps=float(eps), layout=layout,
                                           fallback=backend != "triton")
    size = chunk_size or default_chunk_size(q.shape[0], q.shape[3 - seq_dim], head_dim, max(q.shape[seq_dim], 1))
    return linear_attention_reference(q, k, v, feature_map=feature_map, eps=float(eps), seq_dim=seq_dim,
                                      chunk_size=size)


def linear_attention_state(k: torch.Tensor, v: torch.Tensor, *, feature_map: str, seq_dim: int = 1,
                           chunk_size: int | None = None, backend: str | None = None):
    """The sums ΣS = Σ_j φ(k_j) v_jᵀ (B, H, d_k, d_v) and Σz = Σ_j φ(k_j) (B, H, d_k) over these keys, fp32 for
    fp16/bf16/fp32 keys (fp64 for fp64). Sums over disjoint sets of keys add up: the keys of a long sequence are
    taken in parts, or summed across processes, then divided by the total key count for
    :func:`linear_attention_readout`. ``seq_dim`` 1 is (B, N, H, d), 2 is (B, H, N, d). ``backend`` as in
    :func:`linear_attention` (the Triton state kernel on CUDA); the reference works in chunks of ``chunk_size``
    tokens (None: about 4 MiB of fp32), so half-precision keys are never copied to fp32 whole. The Triton path has
    no backward: when k or v needs a gradient "auto" runs the reference."""
    layout = _layout(seq_dim)
    _check_inputs(k, k, v, feature_map=feature_map, eps=0.0, layout=layout)
    backend = resolve_backend(backend, BACKEND_ENV)
    if _triton_for(backend, k, max(k.shape[-1], v.shape[-1]), needs_grad=k.requires_grad or v.requires_grad):
        return ops.linear_attention_state_triton(k, v, feature_map=feature_map, layout=layout,
                                                 fallback=backend != "triton")
    return linear_attention_state_reference(k, v, feature_map=feature_map, seq_dim=seq_dim, chunk_size=chunk_size)


def linear_attention_readout(q: torch.Tensor, state: torch.Tensor, key_sum: torch.Tensor, *, feature_map: str,
                             eps: float, seq_dim: int = 1, chunk_size: int | None = None,
                             out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps) for mean-form S (B, H, d_k, d_v) and z (B, H, d_k) (the sums of
    :func:`linear_attention_state` divided by the key count), in q's dtype, written into ``out`` when given.
    ``backend`` as in :func:`linear_attention` (the Triton output kernel on CUDA: half-precision dots, fp32
    accumulation); the reference works in chunks of ``chunk_size`` queries."""
    layout = _layout(seq_dim)
    if feature_map not in FEATURE_MAPS:
        raise InvalidArgumentError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}; got {feature_map!r}")
    if not (q.device == state.device == key_sum.device):
        raise InvalidArgumentError(f"q, state and key_sum must be on one device; got {q.device}, {state.device}, "
                                   f"{key_sum.device}")
    backend = resolve_backend(backend, BACKEND_ENV)
    if _triton_for(backend, q, max(q.shape[-1], state.shape[-1]),
                   needs_grad=any(t.requires_grad for t in (q, state, key_sum))):
        result = ops.linear_attention_readout_triton(q, state, key_sum, feature_map=feature_map, eps=float(eps),
                                                     layout=layout, fallback=backend != "triton")
        return result if out is None else out.copy_(result)
    return linear_attention_readout_reference(q, state, key_sum, feature_map=feature_map, eps=float(eps),
                                              seq_dim=seq_dim, chunk_size=chunk_size, out=out)


def _layout(seq_dim: int) -> str:
    if seq_dim not in (1, 2):
        raise InvalidArgumentError(f"seq_dim must be 1 (B, N, H, d) or 2 (B, H, N, d); got {seq_dim!r}")
    return "bnhd" if seq_dim == 1 else "bhnd"


def _triton_for(backend: str, t: torch.Tensor, head_dim: int, *, needs_grad: bool) -> bool:
    """Whether a half of linear attention runs its Triton kernel. They have no backward: a gradient takes the
    reference under "auto" and is refused under "triton"."""
    if not use_triton(backend, t, head_dim, MAX_TRITON_HEAD_DIM):
        return False
    if needs_grad and torch.is_grad_enabled():
        if backend == "triton":
            raise InvalidArgumentError("backend 'triton' cannot run here: the state and readout kernels have no "
                                       "backward; use backend='reference' (or 'auto') to differentiate them")
        return False
    return True


def _check_inputs(q, k, v, *, feature_map: str, eps: float, layout: str) -> int:
    """Validate arguments; return the index of the sequence dimension."""
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if feature_map not in FEATURE_MAPS:
        raise InvalidArgumentError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}; got {feature_map!r}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise InvalidArgumentError(f"eps must be a number >= 0; got {eps!r}")
    seq_dim = LAYOUTS[layout]
    head_dim_index = 3 - seq_dim
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise InvalidArgumentError(f"{name} must be a 4-D tensor in layout {layout!r}; got {_describe(t)}")
        if not t.is_floating_point():
            raise InvalidArgumentError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InvalidArgumentError(f"q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise InvalidArgumentError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        raise InvalidArgumentError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if not (q.shape[head_dim_index] == k.shape[head_dim_index] == v.shape[head_dim_index]):
        raise InvalidArgumentError(
            f"head counts differ in layout {layout!r}: q {q.shape[head_dim_index]}, k {k.shape[head_dim_index]}, "
            f"v {v.shape[head_dim_index]}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise InvalidArgumentError(f"q and k need the same head dimension; got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[seq_dim] != v.shape[seq_dim]:
        raise InvalidArgumentError(
            f"k and v need the same number of tokens; got {k.shape[seq_dim]} and {v.shape[seq_dim]}"
        )
    if k.shape[seq_dim] == 0:
        raise InvalidArgumentError("k and v must hold at least one token")
    return seq_dim


def _describe(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
