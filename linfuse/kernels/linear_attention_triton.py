"""Triton kernels for non-causal normalised linear attention (mean form), forward and backward.

Tensors are addressed through (batch, token, head, feature) strides, so both layouts run without a copy; offsets
are int64; the token count is a runtime argument (no recompilation per resolution). φ, the normaliser, the
division and the downcast are fused; state and accumulators are fp32.

Forward (S and z are raw sums; the mean form divides both by N)::

    1. state   grid (splits, B·H): S_s = Σ_{j∈split s} φ(k_j) v_jᵀ, z_s = Σ φ(k_j) as fp32 partials; summed over s
    2. output  grid (⌈N_q/BLOCK_N⌉, B·H): O_i = (φ(q_i)ᵀ S / N) / (φ(q_i)ᵀ z / N + eps)

Backward, with den_i = φ(q_i)ᵀz/N + eps, D_i = dO_i / den_i and g_i = −(dO_i · O_i) / den_i::

    3. queries grid (splits, B·H): dq_i = φ'(q_i) ⊙ (S D_i + g_i z) / N; partials of R = Σ φ(q_i) D_iᵀ, r = Σ g_i φ(q_i)
    4. keys    grid (⌈N/BLOCK_N⌉, B·H): dk_j = φ'(k_j) ⊙ (R v_j + r) / N,  dv_j = Rᵀ φ(k_j) / N
"""

import torch
import triton
import triton.language as tl

from .triton_utils import block_dim, bnhd, dot_precision
from .triton_utils import empty as _empty  # a module name of its own, so tests can poison it

FEATURE_CODES = {"elu1": 0, "relu": 1, "identity": 2}
# Every configuration the launcher may pick; the tests run each one. BLOCK_N tokens per tile.
CONFIGS = ({"BLOCK_N": 16, "num_warps": 2}, {"BLOCK_N": 32, "num_warps": 4}, {"BLOCK_N": 64, "num_warps": 4},
           {"BLOCK_N": 128, "num_warps": 8})


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    if FEATURE == 0:
        return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif FEATURE == 1:
        return tl.maximum(x, 0.0)
    else:
        return x


@triton.jit
def _phi_grad(x, FEATURE: tl.constexpr):
    if FEATURE == 0:
        return tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif FEATURE == 1:
        return tl.where(x > 0, 1.0, 0.0)
    else:
        return x * 0.0 + 1.0


@triton.jit
def _tile(base, offs_n, offs_d, s_n, s_d, n_end, d_end):
    """Load a (tokens × features) tile as fp32, zero outside [0, n_end) × [0, d_end)."""
    mask = (offs_n[:, None] < n_end) & (offs_d[None, :] < d_end)
    ptrs = base + offs_n[:, None].to(tl.int64) * s_n + offs_d[None, :].to(tl.int64) * s_d
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), mask


@triton.jit
def _load_phi(base, offs_n, s_n, s_d, n_end, D, FEATURE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tiles x and φ(x) (zero outside the valid region), fp32."""
    x, mask = _tile(base, offs_n, tl.arange(0, BLOCK_D), s_n, s_d, n_end, D)
    return x, tl.where(mask, _phi(x, FEATURE), 0.0)


@triton.jit
def _load_pair(x_base, y_base, offs_n, s_xn, s_xd, s_yn, s_yd, n_end, DX, DY, FEATURE: tl.constexpr,
               BLOCK_DX: tl.constexpr, BLOCK_DY: tl.constexpr):
    """Tiles x, φ(x) and the matching tile of y, all fp32."""
    x, phi_x = _load_phi(x_base, offs_n, s_xn, s_xd, n_end, DX, FEATURE, BLOCK_DX)
    y, _ = _tile(y_base, offs_n, tl.arange(0, BLOCK_DY), s_yn, s_yd, n_end, DY)
    return x, phi_x, y


@triton.jit
def _token_tile(H, BLOCK_N: tl.constexpr):
    """For the grid (token tiles, B·H): this program's (b·h, b, h, token offsets)."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    offs_n = tile.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), offs_n


@triton.jit
def _store_tile(base, value, offs_n, offs_d, s_n, s_d, n_end, d_end):
    mask = (offs_n[:, None] < n_end) & (offs_d[None, :] < d_end)
    ptrs = base + offs_n[:, None].to(tl.int64) * s_n + offs_d[None, :].to(tl.int64) * s_d
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _split_range(split, TOKENS_PER_SPLIT, N):
    start = split.to(tl.int64) * TOKENS_PER_SPLIT
    return start, tl.minimum(start + TOKENS_PER_SPLIT, N)


@triton.jit
def _store_partial(MAT_PART, VEC_PART, bh, split, mat, vec, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Write one program's fp32 partial (d_k × d_v matrix and d_k vector) to slot [bh, split]."""
    offs_dk, offs_dv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    part = (bh * tl.num_programs(0) + split).to(tl.int64)
    tl.store(MAT_PART + part * BLOCK_DK * BLOCK_DV + offs_dk[:, None] * BLOCK_DV + offs_dv[None, :], mat)
    tl.store(VEC_PART + part * BLOCK_DK + offs_dk, vec)


@triton.jit(do_not_specialize=["N", "TOKENS_PER_SPLIT"])
def _state_kernel(K, V, S_PART, Z_PART, skb, skn, skh, skd, svb, svn, svh, svd, N, H, DK, DV, TOKENS_PER_SPLIT,
                  FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                  PRECISION: tl.constexpr):
    split, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    start, end = _split_range(split, TOKENS_PER_SPLIT, N)
    acc_s = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_DK,), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        _, phi_k, v = _load_pair(k_base, v_base, offs_n, skn, skd, svn, svd, end, DK, DV, FEATURE, BLOCK_DK, BLOCK_DV)
        acc_s += tl.dot(tl.trans(phi_k), v, input_precision=PRECISION)
        acc_z += tl.sum(phi_k, axis=0)
    _store_partial(S_PART, Z_PART, bh, split, acc_s, acc_z, BLOCK_DK, BLOCK_DV)


@triton.jit
def _load_state(S, Z, bh, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    offs_dk, offs_dv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    base = bh.to(tl.int64)
    s = tl.load(S + base * BLOCK_DK * BLOCK_DV + offs_dk[:, None] * BLOCK_DV + offs_dv[None, :])
    z = tl.load(Z + base * BLOCK_DK + offs_dk)
    return s, z


@triton.jit(do_not_specialize=["NQ"])
def _output_kernel(Q, S, Z, OUT, sqb, sqn, sqh, sqd, sob, son, soh, sod, NQ, H, DK, DV, inv_n, eps,
                   FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PRECISION: tl.constexpr):
    bh, b, h, offs_n = _token_tile(H, BLOCK_N)
    s, z = _load_state(S, Z, bh, BLOCK_DK, BLOCK_DV)
    _, phi_q = _load_phi(Q + b * sqb + h * sqh, offs_n, sqn, sqd, NQ, DK, FEATURE, BLOCK_DK)
    numerator = tl.dot(phi_q, s, input_precision=PRECISION) * inv_n
    denominator = tl.sum(phi_q * z[None, :], axis=1) * inv_n + eps
    _store_tile(OUT + b * sob + h * soh, numerator / denominator[:, None], offs_n, tl.arange(0, BLOCK_DV), son, sod,
                NQ, DV)


@triton.jit(do_not_specialize=["NQ", "TOKENS_PER_SPLIT"])
def _query_grad_kernel(Q, DO, S, Z, DQ, R_PART, RZ_PART, sqb, sqn, sqh, sqd, sdob, sdon, sdoh, sdod,
                       sdqb, sdqn, sdqh, sdqd, NQ, H, DK, DV, inv_n, eps, TOKENS_PER_SPLIT,
                       FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                       PRECISION: tl.constexpr):
    split, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    s, z = _load_state(S, Z, bh, BLOCK_DK, BLOCK_DV)
    q_base, do_base, dq_base = Q + b * sqb + h * sqh, DO + b * sdob + h * sdoh, DQ + b * sdqb + h * sdqh
    offs_dk = tl.arange(0, BLOCK_DK)
    start, end = _split_range(split, TOKENS_PER_SPLIT, NQ)
    acc_r = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    acc_rz = tl.zeros((BLOCK_DK,), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        q, phi_q, d_out = _load_pair(q_base, do_base, offs_n, sqn, sqd, sdon, sdod, end, DK, DV, FEATURE, BLOCK_DK,
                                     BLOCK_DV)
        denominator = tl.sum(phi_q * z[None, :], axis=1) * inv_n + eps
        out = tl.dot(phi_q, s, input_precision=PRECISION) * inv_n / denominator[:, None]
        d_num = d_out / denominator[:, None]
        g = -tl.sum(d_out * out, axis=1) / denominator
        d_phi = (tl.dot(d_num, tl.trans(s), input_precision=PRECISION) + g[:, None] * z[None, :]) * inv_n
        _store_tile(dq_base, d_phi * _phi_grad(q, FEATURE), offs_n, offs_dk, sdqn, sdqd, end, DK)
        acc_r += tl.dot(tl.trans(phi_q), d_num, input_precision=PRECISION)
        acc_rz += tl.sum(phi_q * g[:, None], axis=0)
    _store_partial(R_PART, RZ_PART, bh, split, acc_r, acc_rz, BLOCK_DK, BLOCK_DV)


@triton.jit(do_not_specialize=["N"])
def _key_grad_kernel(K, V, R, RZ, DK_OUT, DV_OUT, skb, skn, skh, skd, svb, svn, svh, svd, sgkb, sgkn, sgkh, sgkd,
                     sgvb, sgvn, sgvh, sgvd, N, H, DK, DV, inv_n,
                     FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     PRECISION: tl.constexpr):
    bh, b, h, offs_n = _token_tile(H, BLOCK_N)
    r, rz = _load_state(R, RZ, bh, BLOCK_DK, BLOCK_DV)
    offs_dk, offs_dv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    k, phi_k, v = _load_pair(K + b * skb + h * skh, V + b * svb + h * svh, offs_n, skn, skd, svn, svd, N, DK, DV,
                             FEATURE, BLOCK_DK, BLOCK_DV)
    d_phi_k = (tl.dot(v, tl.trans(r), input_precision=PRECISION) + rz[None, :]) * inv_n
    _store_tile(DK_OUT + b * sgkb + h * sgkh, d_phi_k * _phi_grad(k, FEATURE), offs_n, offs_dk, sgkn, sgkd, N, DK)
    grad_v = tl.dot(phi_k, r, input_precision=PRECISION) * inv_n
    _store_tile(DV_OUT + b * sgvb + h * sgvh, grad_v, offs_n, offs_dv, sgvn, sgvd, N, DV)


# ---------------------------------------------------------------------------------------------------------------
# Launchers. Shapes are (B, N, H, d) semantically; `layout` says how the tensor's dimensions are ordered.


def _options(t: torch.Tensor, config: dict) -> dict:
    return {"PRECISION": dot_precision(t.dtype), "num_warps": config["num_warps"]}


def default_config(head_dim: int) -> dict:
    return CONFIGS[2] if head_dim <= 64 else CONFIGS[1]


def _split(n: int, programs_per_split: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """Split n tokens so that splits × programs_per_split fills the GPU about four times over."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    splits = max(1, min(triton.cdiv(4 * sms, programs_per_split), triton.cdiv(n, block_n)))
    tokens = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    return triton.cdiv(n, tokens), tokens


def _state(k, v, layout, feature, config):
    (batch, n, heads, dk), k_strides = bnhd(k, layout)
    dv, v_strides = v.shape[-1], bnhd(v, layout)[1]
    bdk, bdv, block_n = block_dim(dk), block_dim(dv), config["BLOCK_N"]
    splits, tokens = _split(n, batch * heads, block_n, k.device)
    s_part = _empty((batch * heads, splits, bdk, bdv), k, torch.float32)
    z_part = _empty((batch * heads, splits, bdk), k, torch.float32)
    _state_kernel[(splits, batch * heads)](
        k, v, s_part, z_part, *k_strides, *v_strides, n, heads, dk, dv, tokens, FEATURE=feature, BLOCK_N=block_n,
        BLOCK_DK=bdk, BLOCK_DV=bdv, **_options(k, config))
    return s_part.sum(1), z_part.sum(1)


def _output(q, s, z, n_keys, dv, layout, feature, eps, config):
    (batch, nq, heads, dk), q_strides = bnhd(q, layout)
    out = _empty(q.shape[:-1] + (dv,), q)
    block_n = config["BLOCK_N"]
    _output_kernel[(triton.cdiv(nq, block_n), batch * heads)](
        q, s, z, out, *q_strides, *bnhd(out, layout)[1], nq, heads, dk, dv, 1.0 / n_keys, eps, FEATURE=feature,
        BLOCK_N=block_n, BLOCK_DK=s.shape[-2], BLOCK_DV=s.shape[-1], **_options(q, config))
    return out


def _query_grads(q, d_out, s, z, n_keys, layout, feature, eps, config):
    (batch, nq, heads, dk), q_strides = bnhd(q, layout)
    dv, bdk, bdv, block_n = d_out.shape[-1], s.shape[-2], s.shape[-1], config["BLOCK_N"]
    splits, tokens = _split(nq, batch * heads, block_n, q.device)
    dq = _empty(q.shape, q)
    r_part = _empty((batch * heads, splits, bdk, bdv), q, torch.float32)
    rz_part = _empty((batch * heads, splits, bdk), q, torch.float32)
    _query_grad_kernel[(splits, batch * heads)](
        q, d_out, s, z, dq, r_part, rz_part, *q_strides, *bnhd(d_out, layout)[1], *bnhd(dq, layout)[1], nq, heads,
        dk, dv, 1.0 / n_keys, eps, tokens, FEATURE=feature, BLOCK_N=block_n, BLOCK_DK=bdk, BLOCK_DV=bdv,
        **_options(q, config))
    return dq, r_part.sum(1), rz_part.sum(1)


def _key_grads(k, v, r, rz, layout, feature, config):
    (batch, n, heads, dk), k_strides = bnhd(k, layout)
    dv, block_n = v.shape[-1], config["BLOCK_N"]
    grad_k, grad_v = _empty(k.shape, k), _empty(v.shape, v)
    _key_grad_kernel[(triton.cdiv(n, block_n), batch * heads)](
        k, v, r, rz, grad_k, grad_v, *k_strides, *bnhd(v, layout)[1], *bnhd(grad_k, layout)[1],
        *bnhd(grad_v, layout)[1], n, heads, dk, dv, 1.0 / n, FEATURE=feature, BLOCK_N=block_n,
        BLOCK_DK=r.shape[-2], BLOCK_DV=r.shape[-1], **_options(k, config))
    return grad_k, grad_v


class LinearAttentionTriton(torch.autograd.Function):
    """Forward: state + output kernels. Backward: query-gradient + key/value-gradient kernels (S, z saved, fp32)."""

    @staticmethod
    def forward(ctx, q, k, v, feature_map: str, eps: float, layout: str, config: dict | None):
        feature, seq_dim = FEATURE_CODES[feature_map], 1 if layout == "bnhd" else 2
        config = config or default_config(max(q.shape[-1], v.shape[-1]))
        s, z = _state(k, v, layout, feature, config)
        out = _output(q, s, z, k.shape[seq_dim], v.shape[-1], layout, feature, eps, config)
        ctx.save_for_backward(q, k, v, s, z)
        ctx.options = (feature, eps, layout, config, k.shape[seq_dim])
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, s, z = ctx.saved_tensors
        feature, eps, layout, config, n_keys = ctx.options
        dq, r, rz = _query_grads(q, d_out, s, z, n_keys, layout, feature, eps, config)
        dk, dv = _key_grads(k, v, r, rz, layout, feature, config)
        return dq, dk, dv, None, None, None, None


def linear_attention_triton(q, k, v, *, feature_map: str, eps: float, layout: str, config: dict | None = None):
    """Triton path of :func:`linfuse.kernels.linear_attention` (arguments already validated there)."""
    return LinearAttentionTriton.apply(q, k, v, feature_map, eps, layout, config)
