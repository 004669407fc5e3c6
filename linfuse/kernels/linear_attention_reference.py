"""Plain PyTorch reference of non-causal normalised linear attention; also the CPU path.

Memory is bounded by chunking over the sequence: only one chunk of φ(k), v or φ(q) is ever held in fp32, the
state is d_k×d_v per (batch, head), and no N×N tensor exists.
"""

import torch

from .feature_maps import FEATURE_MAPS

# Roughly how many fp32 elements one chunk of one operand may hold (1 Mi elements = 4 MiB): large enough that the
# Python loop costs nothing next to the matmuls, small enough that the per-chunk temporaries stay negligible.
_CHUNK_ELEMENTS = 1 << 20


def default_chunk_size(batch: int, heads: int, head_dim: int, seq_len: int) -> int:
    """Tokens per chunk so that one fp32 chunk of shape (batch, chunk, heads, head_dim) stays near 4 MiB."""
    per_token = max(1, batch * heads * head_dim)
    return max(1, min(seq_len, max(256, _CHUNK_ELEMENTS // per_token)))


def _chunks(seq_len: int, chunk_size: int, meta: bool = False):
    """(start, length) of each chunk. On the meta device (the memory preflight's trace) only the first and the last
    chunk: every chunk allocates and frees the same shapes, so the traced peak is the same, and a 16K image's
    thousands of chunks would otherwise cost minutes of Python for a memory estimate."""
    starts = range(0, seq_len, chunk_size)
    if meta and len(starts) > 2:
        starts = [starts[0], starts[-1]]
    for start in starts:
        yield start, min(chunk_size, seq_len - start)


def linear_attention_state_reference(k: torch.Tensor, v: torch.Tensor, *, feature_map: str, seq_dim: int = 1,
                                     chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums S = Σ_j φ(k_j) v_jᵀ (B, H, d_k, d_v) and z = Σ_j φ(k_j) (B, H, d_k) over these keys, in fp32 (fp64
    for fp64). Sums over disjoint sets of keys add up: this is how the keys of a long sequence are taken in parts."""
    phi = FEATURE_MAPS[feature_map]
    acc = torch.promote_types(k.dtype, torch.float32)  # fp32 for half inputs, fp64 stays fp64
    spec = "bnhk,bnhv->bhkv" if seq_dim == 1 else "bhnk,bhnv->bhkv"
    count = k.shape[seq_dim]
    chunk_size = chunk_size or default_chunk_size(k.shape[0], k.shape[3 - seq_dim], max(k.shape[-1], v.shape[-1]),
                                                  max(count, 1))
    state = key_sum = None
    for start, length in _chunks(count, chunk_size, k.is_meta):
        phi_k = phi(k.narrow(seq_dim, start, length).to(acc))
        partial_state = torch.einsum(spec, phi_k, v.narrow(seq_dim, start, length).to(acc))
        partial_sum = phi_k.sum(dim=seq_dim)
        state = partial_state if state is None else state + partial_state
        key_sum = partial_sum if key_sum is None else key_sum + partial_sum
    return state, key_sum


def linear_attention_readout_reference(q: torch.Tensor, state: torch.Tensor, key_sum: torch.Tensor, *,
                                       feature_map: str, eps: float, seq_dim: int = 1, chunk_size: int | None = None,
                                       out: torch.Tensor | None = None) -> torch.Tensor:
    """O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps) for mean-form S and z (the sums divided by the key count); q's dtype."""
    phi = FEATURE_MAPS[feature_map]
    acc = state.dtype
    if out is None:
        out_shape = list(q.shape)
        out_shape[-1] = state.shape[-1]
        out = q.new_empty(out_shape)
    num_spec = "bnhk,bhkv->bnhv" if seq_dim == 1 else "bhnk,bhkv->bhnv"
    den_spec = "bnhk,bhk->bnh" if seq_dim == 1 else "bhnk,bhk->bhn"
    n_q = max(q.shape[seq_dim], 1)
    chunk_size = chunk_size or default_chunk_size(q.shape[0], q.shape[3 - seq_dim], max(q.shape[-1], out.shape[-1]),
                                                  n_q)
    for start, length in _chunks(q.shape[seq_dim], chunk_size, q.is_meta):
        phi_q = phi(q.narrow(seq_dim, start, length).to(acc))
        numerator = torch.einsum(num_spec, phi_q, state)
        denominator = torch.einsum(den_spec, phi_q, key_sum) + eps
        out.narrow(seq_dim, start, length).copy_(numerator.div_(denominator.unsqueeze(-1)))
    return out


def linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    feature_map: str,
    eps: float,
    seq_dim: int,
    chunk_size: int,
) -> torch.Tensor:
    """Mean-form normalised linear attention; see :func:`linfuse.kernels.linear_attention` for the formula.

    ``seq_dim`` is 1 for (B, N, H, d) and 2 for (B, H, N, d). Inputs are validated by the caller.
    """
    n_keys = k.shape[seq_dim]
    state, key_sum = linear_attention_state_reference(k, v, feature_map=feature_map, seq_dim=seq_dim,
                                                      chunk_size=chunk_size)
    return linear_attention_readout_reference(q, state / n_keys, key_sum / n_keys, feature_map=feature_map, eps=eps,
                                              seq_dim=seq_dim, chunk_size=chunk_size)
