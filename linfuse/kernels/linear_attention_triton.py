"""Triton kernels for non-causal normalised linear attention (mean form), forward and backward.

Tensors are addressed through (batch, token, head, feature) strides, so both layouts run without a copy; offsets
are int64; the token count is a runtime argument (no recompilation per resolution). φ, the normaliser, the
division and the downcast are fused. State and accumulators are fp32; the dots take half-precision operands on a
GPU (the input's dtype: tensor cores) and accumulate in fp32. Feature dimensions are tiled (BLOCK_K of d_k,
BLOCK_V of d_v per program or per loop step), so head dims up to 256 run in bounded registers and shared memory.

Forward (S and z are raw sums; the mean form divides both by N)::

    1. state   grid (splits, B·H, k-blocks·v-blocks): S_s[kb, vb] = Σ_{j∈split s} φ(k_j)[kb] v_j[vb]ᵀ and
               z_s = Σ φ(k_j), fp32 partials; summed over s
    2. output  grid (⌈N_q/BLOCK_N⌉, B·H, v-blocks): O_i[vb] = (φ(q_i)ᵀ S[:, vb] / N) / (φ(q_i)ᵀ z / N + eps),
               looping over k-blocks

Backward, with den_i = φ(q_i)ᵀz/N + eps, D_i = dO_i / den_i and g_i = −(dO_i · O_i) / den_i (O saved)::

    3. queries grid (splits, B·H, k-blocks): dq_i[kb] = φ'(q_i[kb]) ⊙ (S[kb] D_i + g_i z[kb]) / N; partials of
               R[kb] = Σ φ(q_i)[kb] D_iᵀ and r[kb] = Σ g_i φ(q_i)[kb]
    4. keys    grid (⌈N/BLOCK_N⌉, B·H, k-blocks + v-blocks): dk_j[kb] = φ'(k_j[kb]) ⊙ (R[kb] v_j + r[kb]) / N,
               dv_j[vb] = R[:, vb]ᵀ φ(k_j) / N

Each kernel's config (tile sizes, warps, pipeline stages) is chosen by the active target's limits
(:mod:`linfuse.kernels.autoconfig`); ``config=`` forces one config for all four kernels (tests).
"""

from functools import cache

import torch
import triton
import triton.language as tl

from .autoconfig import choose
from .dispatch import interpreting
from .hardware import active_limits
from .triton_utils import Launch, block_dim, bnhd, dot_dtype, dot_precision
from .triton_utils import empty as _empty  # a module name of its own, so tests can poison it

FEATURE_CODES = {"elu1": 0, "relu": 1, "identity": 2}
# Configs the interpreter tests run one by one (each forces all four kernels); on a GPU the launchers choose from
# `candidates` by the target's limits instead.
CONFIGS = ({"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_V": 16, "num_warps": 2, "num_stages": 1},
           {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_V": 16, "num_warps": 4, "num_stages": 2},
           {"BLOCK_N": 64, "BLOCK_K": 16, "BLOCK_V": 32, "num_warps": 4, "num_stages": 2},
           {"BLOCK_N": 128, "BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 8, "num_stages": 3})


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
    """Load a (tokens × features) tile in its own dtype, zero outside [0, n_end) × [0, d_end)."""
    mask = (offs_n[:, None] < n_end) & (offs_d[None, :] < d_end)
    ptrs = base + offs_n[:, None].to(tl.int64) * s_n + offs_d[None, :].to(tl.int64) * s_d
    return tl.load(ptrs, mask=mask, other=0.0), mask


@triton.jit
def _phi_tile(base, offs_n, offs_d, s_n, s_d, n_end, d_end, FEATURE: tl.constexpr):
    """Tiles x and φ(x) in fp32, φ zero outside the valid region."""
    x, mask = _tile(base, offs_n, offs_d, s_n, s_d, n_end, d_end)
    x = x.to(tl.float32)
    return x, tl.where(mask, _phi(x, FEATURE), 0.0)


@triton.jit
def _state_block(S, bh, offs_k, offs_v, s_bh, s_k, DK, DV, scale):
    """fp32 block S[bh, offs_k, offs_v] · scale of a (B·H, ·, ·) state, zero outside d_k × d_v."""
    mask = (offs_k[:, None] < DK) & (offs_v[None, :] < DV)
    ptrs = S + bh.to(tl.int64) * s_bh + offs_k[:, None] * s_k + offs_v[None, :]
    return tl.load(ptrs, mask=mask, other=0.0) * scale


@triton.jit
def _vector_block(Z, bh, offs_k, s_bh, DK):
    return tl.load(Z + bh.to(tl.int64) * s_bh + offs_k, mask=offs_k < DK, other=0.0)


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
def _store_partial(MAT_PART, VEC_PART, bh, split, offs_k, offs_v, mat, vec, vec_end, DKP, DVP):
    """Write one program's fp32 partial block to MAT_PART[bh, split, offs_k, offs_v], and the vector's entries below
    vec_end (0 for programs that leave the vector to another)."""
    part = (bh * tl.num_programs(0) + split).to(tl.int64)
    tl.store(MAT_PART + part * DKP * DVP + offs_k[:, None] * DVP + offs_v[None, :], mat)
    tl.store(VEC_PART + part * DKP + offs_k, vec, mask=offs_k < vec_end)


@triton.jit
def _program_bh(H):
    bh = tl.program_id(1)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit(do_not_specialize=["N", "TOKENS_PER_SPLIT"])
def _state_kernel(K, V, S_PART, Z_PART, skb, skn, skh, skd, svb, svn, svh, svd, N, H, DK, DV, DKP, DVP,
                  TOKENS_PER_SPLIT, FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_V: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    split = tl.program_id(0)
    bh, b, h = _program_bh(H)
    n_vb = DVP // BLOCK_V
    kb, vb = tl.program_id(2) // n_vb, tl.program_id(2) % n_vb
    offs_k, offs_v = kb * BLOCK_K + tl.arange(0, BLOCK_K), vb * BLOCK_V + tl.arange(0, BLOCK_V)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    start, end = _split_range(split, TOKENS_PER_SPLIT, N)
    acc_s = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        _, phi_k = _phi_tile(k_base, offs_n, offs_k, skn, skd, end, DK, FEATURE)
        v, _ = _tile(v_base, offs_n, offs_v, svn, svd, end, DV)
        acc_s += tl.dot(tl.trans(phi_k.to(DOT)), v.to(DOT), input_precision=PRECISION)
        acc_z += tl.sum(phi_k, axis=0)
    _store_partial(S_PART, Z_PART, bh, split, offs_k, offs_v, acc_s, acc_z, tl.where(vb == 0, DKP, 0), DKP, DVP)


@triton.jit(do_not_specialize=["NQ"])
def _output_kernel(Q, S, Z, OUT, sqb, sqn, sqh, sqd, sob, son, soh, sod, NQ, H, DK, DV, s_bh, s_k, z_bh, inv_n, eps,
                   FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
                   DOT: tl.constexpr, PRECISION: tl.constexpr):
    bh, b, h = _program_bh(H)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    q_base = Q + b * sqb + h * sqh
    numerator = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    denominator = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, DK, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        _, phi_q = _phi_tile(q_base, offs_n, offs_k, sqn, sqd, NQ, DK, FEATURE)
        denominator += tl.sum(phi_q * _vector_block(Z, bh, offs_k, z_bh, DK)[None, :], axis=1)
        s = _state_block(S, bh, offs_k, offs_v, s_bh, s_k, DK, DV, inv_n)
        numerator += tl.dot(phi_q.to(DOT), s.to(DOT), input_precision=PRECISION)
    denominator = denominator * inv_n + eps
    _store_tile(OUT + b * sob + h * soh, numerator / denominator[:, None], offs_n, offs_v, son, sod, NQ, DV)


@triton.jit
def _denominator(q_base, Z, bh, offs_n, sqn, sqd, NQ, DK, z_bh, inv_n, eps, FEATURE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """den_i = φ(q_i)ᵀ z / N + eps over every k-block."""
    den = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, DK, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        _, phi_q = _phi_tile(q_base, offs_n, offs_k, sqn, sqd, NQ, DK, FEATURE)
        den += tl.sum(phi_q * _vector_block(Z, bh, offs_k, z_bh, DK)[None, :], axis=1)
    return den * inv_n + eps


@triton.jit(do_not_specialize=["NQ", "TOKENS_PER_SPLIT"])
def _query_grad_kernel(Q, DO, OUT, S, Z, DQ, R_PART, RZ_PART, sqb, sqn, sqh, sqd, sdob, sdon, sdoh, sdod,
                       sob, son, soh, sod, sdqb, sdqn, sdqh, sdqd, NQ, H, DK, DV, DKP, DVP, s_bh, s_k, z_bh, inv_n,
                       eps, TOKENS_PER_SPLIT, FEATURE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_DV: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    split = tl.program_id(0)
    bh, b, h = _program_bh(H)
    offs_k, offs_v = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_DV)
    s = _state_block(S, bh, offs_k, offs_v, s_bh, s_k, DK, DV, inv_n).to(DOT)  # S[kb, :] / N
    z = _vector_block(Z, bh, offs_k, z_bh, DK) * inv_n
    q_base, do_base, o_base = Q + b * sqb + h * sqh, DO + b * sdob + h * sdoh, OUT + b * sob + h * soh
    dq_base = DQ + b * sdqb + h * sdqh
    start, end = _split_range(split, TOKENS_PER_SPLIT, NQ)
    acc_r = tl.zeros((BLOCK_K, BLOCK_DV), dtype=tl.float32)
    acc_rz = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        den = _denominator(q_base, Z, bh, offs_n, sqn, sqd, end, DK, z_bh, inv_n, eps, FEATURE, BLOCK_N, BLOCK_K)
        d_out, _ = _tile(do_base, offs_n, offs_v, sdon, sdod, end, DV)
        out, _ = _tile(o_base, offs_n, offs_v, son, sod, end, DV)
        d_out = d_out.to(tl.float32)
        g = -tl.sum(d_out * out.to(tl.float32), axis=1) / den
        d_num = (d_out / den[:, None]).to(DOT)
        q, phi_q = _phi_tile(q_base, offs_n, offs_k, sqn, sqd, end, DK, FEATURE)
        d_phi = tl.dot(d_num, tl.trans(s), input_precision=PRECISION) + g[:, None] * z[None, :]
        _store_tile(dq_base, d_phi * _phi_grad(q, FEATURE), offs_n, offs_k, sdqn, sdqd, end, DK)
        acc_r += tl.dot(tl.trans(phi_q.to(DOT)), d_num, input_precision=PRECISION)
        acc_rz += tl.sum(phi_q * g[:, None], axis=0)
    _store_partial(R_PART, RZ_PART, bh, split, offs_k, offs_v, acc_r, acc_rz, DKP, DKP, DVP)


@triton.jit(do_not_specialize=["N"])
def _key_grad_kernel(K, V, R, RZ, DK_OUT, DV_OUT, skb, skn, skh, skd, svb, svn, svh, svd, sgkb, sgkn, sgkh, sgkd,
                     sgvb, sgvn, sgvh, sgvd, N, H, DK, DV, r_bh, r_k, rz_bh, inv_n, FEATURE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_DV: tl.constexpr,
                     DOT: tl.constexpr, PRECISION: tl.constexpr):
    bh, b, h = _program_bh(H)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    n_kb = tl.cdiv(DK, BLOCK_K)
    block = tl.program_id(2)
    if block < n_kb:  # dk[kb] = φ'(k[kb]) ⊙ (R[kb] v + r[kb]) / N
        offs_k, offs_dv = block * BLOCK_K + tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_DV)
        v, _ = _tile(v_base, offs_n, offs_dv, svn, svd, N, DV)
        r = _state_block(R, bh, offs_k, offs_dv, r_bh, r_k, DK, DV, inv_n).to(DOT)
        d_phi_k = tl.dot(v.to(DOT), tl.trans(r), input_precision=PRECISION)
        d_phi_k += _vector_block(RZ, bh, offs_k, rz_bh, DK)[None, :] * inv_n
        k, _ = _phi_tile(k_base, offs_n, offs_k, skn, skd, N, DK, FEATURE)
        _store_tile(DK_OUT + b * sgkb + h * sgkh, d_phi_k * _phi_grad(k, FEATURE), offs_n, offs_k, sgkn, sgkd, N,
                    DK)
    else:  # dv[vb] = R[:, vb]ᵀ φ(k) / N
        offs_v = (block - n_kb) * BLOCK_V + tl.arange(0, BLOCK_V)
        grad_v = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for k0 in range(0, DK, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            _, phi_k = _phi_tile(k_base, offs_n, offs_k, skn, skd, N, DK, FEATURE)
            r = _state_block(R, bh, offs_k, offs_v, r_bh, r_k, DK, DV, inv_n)
            grad_v += tl.dot(phi_k.to(DOT), r.to(DOT), input_precision=PRECISION)
        _store_tile(DV_OUT + b * sgvb + h * sgvh, grad_v, offs_n, offs_v, sgvn, sgvd, N, DV)


# ---------------------------------------------------------------------------------------------------------------
# Configs. Candidates in order of preference: big token tiles and full feature blocks first (fewer passes over the
# inputs), then smaller ones; the first that the target holds without spilling is taken (autoconfig.choose).


@cache
def candidates(kernel: str, dk: int, dv: int, element_size: int = 2) -> tuple[dict, ...]:
    """Candidate configs of one kernel ("state", "output", "query_grad", "key_grad") for head dims dk, dv; fp32
    operands (element_size 4) start one token block smaller."""
    bdk, bdv = block_dim(dk), block_dim(dv)
    feature_blocks = {
        "state": [(min(bdk, 128), min(bdv, 64)), (min(bdk, 64), min(bdv, 64)), (min(bdk, 32), min(bdv, 32))],
        "output": [(min(bdk, 64), min(bdv, 128)), (min(bdk, 32), min(bdv, 64)), (min(bdk, 16), min(bdv, 32))],
        "query_grad": [(min(bdk, 64), bdv), (min(bdk, 32), bdv), (16, bdv)],
        "key_grad": [(min(bdk, 64), min(bdv, 64)), (min(bdk, 32), min(bdv, 32)), (16, 16)],
    }[kernel]
    if kernel in ("output", "key_grad"):
        token_blocks = (128, 64, 32, 16)
    else:  # the query-gradient kernel holds full-width dO and O tiles: wide d_v takes fewer tokens
        token_blocks = (64, 32, 16) if bdv <= 64 else (32, 16, 64) if bdv == 128 else (16, 32)
    if element_size > 2 and len(token_blocks) > 2:
        token_blocks = token_blocks[1:]
    token_blocks = token_blocks[:3]
    out = []
    for block_n in token_blocks:
        for block_k, block_v in dict.fromkeys(feature_blocks):
            elements = block_n * max(block_k, block_v if kernel != "query_grad" else bdv)
            warps, other = (8, 4) if elements >= 8192 or (kernel == "query_grad" and bdv >= 128) else (4, 8)
            for num_warps, num_stages in ((warps, 2), (other, 2)):
                out.append({"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_V": block_v, "num_warps": num_warps,
                            "num_stages": num_stages})
    return tuple(out)


def _meta(t: torch.Tensor, config: dict, feature: int, **blocks) -> dict:
    return {"FEATURE": feature, "DOT": dot_dtype(t.dtype), "PRECISION": dot_precision(t.dtype),
            "num_warps": config["num_warps"], "num_stages": config["num_stages"], **blocks}


def _pick(kernel: str, problem: str, dk: int, dv: int, element_size: int, build, forced: dict | None) -> dict:
    # Only the forward kernels may be timed by autotuning: the backward probes write into stand-in buffers that
    # alias the inputs (fine for compiling, not for launching).
    return choose(f"linear_attention.{kernel}", problem, candidates(kernel, dk, dv, element_size), build,
                  pure=kernel in ("state", "output"), forced=forced)


def _split(n: int, programs_per_split: int, block_n: int) -> tuple[int, int]:
    """Split n tokens so that splits × programs_per_split fills the target's multiprocessors about four times."""
    sms = 1 if interpreting() else active_limits().multiprocessors
    splits = max(1, min(triton.cdiv(4 * sms, programs_per_split), triton.cdiv(n, block_n)))
    tokens = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    return triton.cdiv(n, tokens), tokens


def _padded(d: int, block: int) -> int:
    return triton.cdiv(d, block) * block


class _Problem:
    """Shapes, dtype and feature map of one call; builds each kernel's Launch for a given config."""

    def __init__(self, q, k, v, feature: int, eps: float, layout: str, *, dv: int = 0, n: int = 0):
        """``dv`` and ``n`` stand in for v's head dim and k's token count when there are no keys (readout)."""
        self.q, self.k, self.v, self.feature, self.eps, self.layout = q, k, v, feature, eps, layout
        (self.batch, self.nq, self.heads, self.dk), _ = bnhd(q, layout)
        self.n = n or bnhd(k, layout)[0][1]
        self.dv = dv or v.shape[-1]
        self.key = f"{str(q.dtype).removeprefix('torch.')} d_k={self.dk} d_v={self.dv} feature map {feature}"

    def strides(self, t):
        return bnhd(t, self.layout)[1]

    def state(self, config):
        block_n, block_k, block_v = config["BLOCK_N"], config["BLOCK_K"], config["BLOCK_V"]
        dkp, dvp = _padded(self.dk, block_k), _padded(self.dv, block_v)
        bh = self.batch * self.heads
        splits, tokens = _split(self.n, bh * (dkp // block_k) * (dvp // block_v), block_n)
        s_part = _empty((bh, splits, dkp, dvp), self.k, torch.float32)
        z_part = _empty((bh, splits, dkp), self.k, torch.float32)
        launch = Launch(_state_kernel, (splits, bh, (dkp // block_k) * (dvp // block_v)),
                        (self.k, self.v, s_part, z_part, *self.strides(self.k), *self.strides(self.v), self.n,
                         self.heads, self.dk, self.dv, dkp, dvp, tokens),
                        _meta(self.k, config, self.feature, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_V=block_v),
                        config)
        return launch, s_part, z_part

    def output(self, config, s, z, out):
        block_n, block_v = config["BLOCK_N"], config["BLOCK_V"]
        grid = (triton.cdiv(self.nq, block_n), self.batch * self.heads, triton.cdiv(self.dv, block_v))
        return Launch(_output_kernel, grid,
                      (self.q, s, z, out, *self.strides(self.q), *self.strides(out), self.nq, self.heads, self.dk,
                       self.dv, s.stride(0), s.stride(1), z.stride(0), 1.0 / self.n, self.eps),
                      _meta(self.q, config, self.feature, BLOCK_N=block_n, BLOCK_K=config["BLOCK_K"],
                            BLOCK_V=block_v), config)

    def query_grads(self, config, d_out, out, s, z, dq):
        block_n, block_k = config["BLOCK_N"], config["BLOCK_K"]
        bdv, dkp = block_dim(self.dv), _padded(self.dk, block_k)
        bh = self.batch * self.heads
        splits, tokens = _split(self.nq, bh * (dkp // block_k), block_n)
        r_part = _empty((bh, splits, dkp, bdv), self.q, torch.float32)
        rz_part = _empty((bh, splits, dkp), self.q, torch.float32)
        launch = Launch(_query_grad_kernel, (splits, bh, dkp // block_k),
                        (self.q, d_out, out, s, z, dq, r_part, rz_part, *self.strides(self.q),
                         *self.strides(d_out), *self.strides(out), *self.strides(dq), self.nq, self.heads, self.dk,
                         self.dv, dkp, bdv, s.stride(0), s.stride(1), z.stride(0), 1.0 / self.n, self.eps, tokens),
                        _meta(self.q, config, self.feature, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_DV=bdv), config)
        return launch, r_part, rz_part

    def key_grads(self, config, r, rz, grad_k, grad_v):
        block_n, block_k, block_v = config["BLOCK_N"], config["BLOCK_K"], config["BLOCK_V"]
        blocks = triton.cdiv(self.dk, block_k) + triton.cdiv(self.dv, block_v)
        return Launch(_key_grad_kernel, (triton.cdiv(self.n, block_n), self.batch * self.heads, blocks),
                      (self.k, self.v, r, rz, grad_k, grad_v, *self.strides(self.k), *self.strides(self.v),
                       *self.strides(grad_k), *self.strides(grad_v), self.n, self.heads, self.dk, self.dv,
                       r.stride(0), r.stride(1), rz.stride(0), 1.0 / self.n),
                      _meta(self.k, config, self.feature, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_V=block_v,
                            BLOCK_DV=block_dim(self.dv)), config)

    def _probe_state(self, dkp: int, dvp: int):
        """Stand-ins of a state (B·H, dkp, dvp) and its vector, for compiling a config before the real one exists
        (built only when a choice is not cached yet)."""
        bh = self.batch * self.heads
        return _empty((bh, dkp, dvp), self.q, torch.float32), _empty((bh, dkp), self.q, torch.float32)

    def _state_like(self, state_config: dict):
        """Stand-ins of the state the state kernel with ``state_config`` makes."""
        return self._probe_state(_padded(self.dk, state_config["BLOCK_K"]), _padded(self.dv, state_config["BLOCK_V"]))

    def _like_out(self):
        return _empty(self.q.shape[:-1] + (self.dv,), self.q)

    def sums(self, config):
        """Run the state kernel; the raw sums (B·H, d_kp, d_vp) and (B·H, d_kp), padded to the config's blocks as
        the output kernel's configs were chosen for (a padded row stride keeps its 16-byte alignment)."""
        launch, s_part, z_part = self.state(config)
        launch.run()
        return s_part.sum(1), z_part.sum(1)

    def unpadded(self, s, z):
        """The padded sums cut to (B·H, d_k, d_v) and (B·H, d_k), contiguous: the shapes the ops declare."""
        return s[:, :self.dk, :self.dv].contiguous(), z[:, :self.dk].contiguous()

    def choose_output(self, forced):
        """The output kernel's config for an unpadded state (B·H, d_k, d_v), as :func:`readout` hands it."""
        return _pick("output", self.key, self.dk, self.dv, self.q.element_size(),
                     lambda c: self.output(c, *self._probe_state(self.dk, self.dv), self._like_out()), forced)

    def choose_forward(self, forced):
        state = _pick("state", self.key, self.dk, self.dv, self.q.element_size(), lambda c: self.state(c)[0], forced)
        output = _pick("output", self.key, self.dk, self.dv, self.q.element_size(),
                       lambda c: self.output(c, *self._state_like(state), self._like_out()), forced)
        return state, output

    def choose_backward(self, forced, state: dict):
        query = _pick("query_grad", self.key, self.dk, self.dv, self.q.element_size(),
                      lambda c: self.query_grads(c, self._like_out(), self._like_out(), *self._state_like(state),
                                                 self.q)[0], forced)
        key = _pick("key_grad", self.key, self.dk, self.dv, self.q.element_size(),
                    lambda c: self.key_grads(c, *self._probe_state(_padded(self.dk, query["BLOCK_K"]),
                                                                   block_dim(self.dv)), self.k, self.v), forced)
        return query, key


def forward(q, k, v, *, feature_map: str, eps: float, layout: str, config: dict | None = None):
    """Forward of :func:`linfuse.kernels.linear_attention` (arguments validated there): (O, ΣS, Σz) with the raw
    sums (B·H, d_k, d_v) and (B·H, d_k) in fp32, which the backward reads. When q, k or v needs a gradient the
    backward's configs are chosen here too, so a problem that cannot run is refused before any work."""
    problem = _Problem(q, k, v, FEATURE_CODES[feature_map], eps, layout)
    state_config, output_config = problem.choose_forward(config)
    if any(t.requires_grad for t in (q, k, v)):
        problem.choose_backward(config, state_config)
    s, z = problem.sums(state_config)
    out = _empty(q.shape[:-1] + (problem.dv,), q)
    problem.output(output_config, s, z, out).run()
    return (out, *problem.unpadded(s, z))


def backward(q, k, v, out, s, z, d_out, *, feature_map: str, eps: float, layout: str, config: dict | None = None):
    """(dq, dk, dv) from the forward's O, ΣS and Σz: the query-gradient and key/value-gradient kernels."""
    problem = _Problem(q, k, v, FEATURE_CODES[feature_map], eps, layout)
    query_config, key_config = problem.choose_backward(config, problem.choose_forward(config)[0])
    if d_out.stride() != out.stride():  # e.g. the stride-0 gradient of a sum; out is contiguous, as chosen for
        d_out = d_out.contiguous()
    dq = _empty(q.shape, q)
    launch, r_part, rz_part = problem.query_grads(query_config, d_out, out, s, z, dq)
    launch.run()
    grad_k, grad_v = _empty(k.shape, k), _empty(v.shape, v)
    problem.key_grads(key_config, r_part.sum(1), rz_part.sum(1), grad_k, grad_v).run()
    return dq, grad_k, grad_v


def state(k, v, *, feature_map: str, layout: str, config: dict | None = None):
    """The raw sums ΣS (B, H, d_k, d_v) and Σz (B, H, d_k) in fp32 over these keys: the state kernel alone."""
    problem = _Problem(k, k, v, FEATURE_CODES[feature_map], 0.0, layout)
    s, z = problem.unpadded(*problem.sums(problem.choose_forward(config)[0]))
    batch, heads = problem.batch, problem.heads
    return s.view(batch, heads, problem.dk, problem.dv), z.view(batch, heads, problem.dk)


def readout(q, s, z, *, feature_map: str, eps: float, layout: str, config: dict | None = None):
    """O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps) for a mean-form state S (B, H, d_k, d_v) and z (B, H, d_k): the output
    kernel alone, in q's dtype."""
    batch, heads, dk, dv = s.shape
    problem = _Problem(q, None, None, FEATURE_CODES[feature_map], eps, layout, dv=dv, n=1)  # S is a mean: 1/N = 1
    output_config = problem.choose_output(config)
    s = s.to(torch.float32).reshape(batch * heads, dk, dv).contiguous()
    z = z.to(torch.float32).reshape(batch * heads, dk).contiguous()
    out = _empty(q.shape[:-1] + (dv,), q)
    problem.output(output_config, s, z, out).run()
    return out
