"""Triton kernels for 2-D local softmax attention with leading global tokens (semantics: local_attention_reference).

Forward, grid (image query tiles + global query blocks, B·H). An image program owns a TILE_H×TILE_W patch of
queries and streams (a) the global keys in 1-D blocks, then (b) the haloed rectangle of image keys the patch can
see, in KEY_H×KEY_W sub-tiles addressed with 2-D index math straight from the raster layout. Sub-tiles outside every
query's window are skipped; sub-tiles inside every query's window skip the mask. Softmax is online, in fp32, in
base 2. A global program streams all keys. The log-sum-exp of each row is stored for the backward.

Backward, same grid and same key walk: recompute P = exp(S − lse), dV += Pᵀ dO and dK += dSᵀ Q · scale with fp32
atomics (a key is seen by several query tiles), dQ = dS K · scale written once, with dS = P ⊙ (dO Vᵀ − Δ) and
Δ = rowsum(dO ⊙ O).
"""

from functools import cache

import torch
import triton
import triton.language as tl

from .autoconfig import choose
from .triton_utils import Launch, block_dim, bnhd, dot_precision
from .triton_utils import empty as _empty  # a module name of its own, so tests can poison it

WINDOW_CODES = {"circle": 0, "square": 1}
LOG2E = 1.4426950408889634


@triton.jit
def _window_lo(q, R, SIZE):
    """Lower edge of the clamped square window of query coordinate q (NATTEN semantics)."""
    return tl.minimum(tl.maximum(q - R, 0), tl.maximum(SIZE - 2 * R - 1, 0))


@triton.jit
def _key_range(q0, q1, R, SIZE, WINDOW: tl.constexpr):
    """Inclusive range of key coordinates any query in [q0, q1] sees along one axis."""
    if WINDOW == 0:
        return tl.maximum(q0 - R + 1, 0), tl.minimum(q1 + R - 1, SIZE - 1)
    else:
        return _window_lo(q0, R, SIZE), tl.minimum(_window_lo(q1, R, SIZE) + 2 * R, SIZE - 1)


@triton.jit
def _sees(qy, qx, ky, kx, R, GH, GW, WINDOW: tl.constexpr):
    if WINDOW == 0:
        return (qy - ky) * (qy - ky) + (qx - kx) * (qx - kx) < R * R
    else:
        lo_y, lo_x = _window_lo(qy, R, GH), _window_lo(qx, R, GW)
        return (ky >= lo_y) & (ky <= lo_y + 2 * R) & (kx >= lo_x) & (kx <= lo_x + 2 * R)


@triton.jit
def _subtile_class(y0, y1, x0, x1, ky0, ky1, kx0, kx1, R, GH, GW, WINDOW: tl.constexpr):
    """(empty, full) for query box [y0,y1]×[x0,x1] against key box [ky0,ky1]×[kx0,kx1] (keys already in grid)."""
    if WINDOW == 0:
        near_y = tl.maximum(tl.maximum(ky0 - y1, y0 - ky1), 0)
        near_x = tl.maximum(tl.maximum(kx0 - x1, x0 - kx1), 0)
        far_y = tl.maximum(ky1 - y0, y1 - ky0)
        far_x = tl.maximum(kx1 - x0, x1 - kx0)
        return near_y * near_y + near_x * near_x >= R * R, far_y * far_y + far_x * far_x < R * R
    else:
        # every query's window contains [lo(y1), lo(y0) + 2R]; the union is [lo(y0), lo(y1) + 2R]
        full_y = (ky0 >= _window_lo(y1, R, GH)) & (ky1 <= _window_lo(y0, R, GH) + 2 * R)
        full_x = (kx0 >= _window_lo(x1, R, GW)) & (kx1 <= _window_lo(x0, R, GW) + 2 * R)
        return False, full_y & full_x


@triton.jit
def _image_key_offsets(ky0, kx0, GH, GW, G, KEY_H: tl.constexpr, KEY_W: tl.constexpr):
    j = tl.arange(0, KEY_H * KEY_W)
    ky, kx = ky0 + j // KEY_W, kx0 + j % KEY_W
    valid = (ky < GH) & (kx < GW)
    return ky, kx, (G + ky * GW + kx).to(tl.int64), valid


@triton.jit
def _load_rows(base, rows, valid, s_n, s_d, D, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None] * s_n + offs_d[None, :].to(tl.int64) * s_d
    return tl.load(ptrs, mask=valid[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _online_update(m_i, l_i, acc, scores, v, PRECISION: tl.constexpr):
    """One step of the base-2 online softmax; rows that have seen no key yet keep m = -inf safely."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(scores - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _image_queries(pid, n_tiles_x, G, GH, GW, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    ty, tx = pid // n_tiles_x, pid % n_tiles_x
    i = tl.arange(0, TILE_H * TILE_W)
    qy, qx = ty * TILE_H + i // TILE_W, tx * TILE_W + i % TILE_W
    valid = (qy < GH) & (qx < GW)
    return qy, qx, (G + qy * GW + qx).to(tl.int64), valid


@triton.jit
def _masked_scores(q, k, qy, qx, ky, kx, kvalid, full, qk_scale, R, GH, GW, WINDOW: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Base-2 scores of a query patch against an image key sub-tile; the window predicate only where needed."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if not full:
        seen = kvalid[None, :] & _sees(qy[:, None], qx[:, None], ky[None, :], kx[None, :], R, GH, GW, WINDOW)
        s = tl.where(seen, s, float("-inf"))
    return s


@triton.jit
def _grad_step(dq_acc, s, q, k, v, d_out, lse, delta, q_valid, krows, kvalid, DK_BUF, DV_BUF, sgn, sgd, D, DV, scale,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of one (query tile, key tile) pair: returns the new dQ accumulator, adds into dK and dV."""
    p = tl.where(q_valid[:, None], tl.exp2(s - lse[:, None]), 0.0)
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    dv_ptrs = DV_BUF + krows[:, None] * sgn + offs_dv[None, :] * sgd
    tl.atomic_add(dv_ptrs, tl.dot(tl.trans(p.to(d_out.dtype)), d_out, input_precision=PRECISION),
                  mask=kvalid[:, None] & (offs_dv[None, :] < DV))
    dp = tl.dot(d_out, tl.trans(v), input_precision=PRECISION)
    ds = (p * (dp - delta[:, None]) * scale).to(q.dtype)  # tensor-core operands share the input dtype
    dk_ptrs = DK_BUF + krows[:, None] * sgn + offs_d[None, :] * sgd
    tl.atomic_add(dk_ptrs, tl.dot(tl.trans(ds), q, input_precision=PRECISION),
                  mask=kvalid[:, None] & (offs_d[None, :] < D))
    return dq_acc + tl.dot(ds, k, input_precision=PRECISION)


@triton.jit
def _step(m_i, l_i, acc, s, q, k, v, d_out, lse, delta, q_valid, krows, kvalid, DK_BUF, DV_BUF, sgn, sgd, D, DV,
          scale, BACKWARD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    if BACKWARD:
        acc = _grad_step(acc, s, q, k, v, d_out, lse, delta, q_valid, krows, kvalid, DK_BUF, DV_BUF, sgn, sgd, D,
                         DV, scale, BLOCK_D, BLOCK_DV, PRECISION)
    else:
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, PRECISION)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["G", "GH", "GW", "R", "n_tiles_x", "n_image_tiles"])
def _kernel(Q, K, V, OUT, LSE, DO, DELTA, DQ, DK_BUF, DV_BUF,
            sqb, sqn, sqh, sqd, skb, skn, skh, skd, svb, svn, svh, svd, sob, son, soh, sod, sgb, sgn, sgh, sgd,
            G, GH, GW, H, D, DV, R, scale, qk_scale, n_tiles_x, n_image_tiles,
            WINDOW: tl.constexpr, BACKWARD: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
            KEY_H: tl.constexpr, KEY_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
            PRECISION: tl.constexpr):
    """Forward (BACKWARD=False: writes OUT and LSE) or backward (writes DQ, adds into DK_BUF and DV_BUF).

    OUT, DO and DQ share q's layout strides (sob…); DK_BUF and DV_BUF are fp32 (B, N, H, ·) buffers (sgb…).
    """
    pid, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    q_base, k_base, v_base = Q + b * sqb + h * sqh, K + b * skb + h * skh, V + b * svb + h * svh
    o_off, g_off = b * sob + h * soh, b * sgb + h * sgh
    dk_base, dv_base = DK_BUF + g_off, DV_BUF + g_off
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    BLOCK_N: tl.constexpr = KEY_H * KEY_W
    n_total = G + GH * GW
    offs_dv = tl.arange(0, BLOCK_DV)
    if pid < n_image_tiles:
        qy, qx, rows, q_valid = _image_queries(pid, n_tiles_x, G, GH, GW, TILE_H, TILE_W)
        n_global_keys = G
    else:
        rows = ((pid - n_image_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        q_valid = rows < G
        qy = tl.zeros((BLOCK_M,), tl.int32)  # unused for global queries; same type as the image branch's
        qx = qy
        n_global_keys = n_total  # a global query sees every key: walk them all as one 1-D range
    q = _load_rows(q_base, rows, q_valid, sqn, sqd, D, BLOCK_D)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    lse = tl.zeros((BLOCK_M,), tl.float32)
    delta = tl.zeros((BLOCK_M,), tl.float32)
    d_out = tl.zeros((BLOCK_M, BLOCK_DV), q.dtype)
    if BACKWARD:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        lse = tl.load(LSE + bh.to(tl.int64) * n_total + rows, mask=q_valid, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * n_total + rows, mask=q_valid, other=0.0)
        d_out = _load_rows(DO + o_off, rows, q_valid, son, sod, DV, BLOCK_DV)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(0, n_global_keys, BLOCK_N):
        kn = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        kvalid = kn < n_global_keys
        k = _load_rows(k_base, kn, kvalid, skn, skd, D, BLOCK_D)
        v = _load_rows(v_base, kn, kvalid, svn, svd, DV, BLOCK_DV)
        s = tl.where(kvalid[None, :], tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale, float("-inf"))
        m_i, l_i, acc = _step(m_i, l_i, acc, s, q, k, v, d_out, lse, delta, q_valid, kn, kvalid, dk_base, dv_base,
                              sgn, sgd, D, DV, scale, BACKWARD, BLOCK_D, BLOCK_DV, PRECISION)
    if pid < n_image_tiles:
        y0, x0 = (pid // n_tiles_x) * TILE_H, (pid % n_tiles_x) * TILE_W
        y1, x1 = tl.minimum(y0 + TILE_H, GH) - 1, tl.minimum(x0 + TILE_W, GW) - 1
        ky_lo, ky_hi = _key_range(y0, y1, R, GH, WINDOW)
        kx_lo, kx_hi = _key_range(x0, x1, R, GW, WINDOW)
        for ky0 in range(ky_lo, ky_hi + 1, KEY_H):
            for kx0 in range(kx_lo, kx_hi + 1, KEY_W):
                ky1, kx1 = tl.minimum(ky0 + KEY_H - 1, ky_hi), tl.minimum(kx0 + KEY_W - 1, kx_hi)
                empty, full = _subtile_class(y0, y1, x0, x1, ky0, ky1, kx0, kx1, R, GH, GW, WINDOW)
                full = full & (ky0 + KEY_H - 1 <= ky_hi) & (kx0 + KEY_W - 1 <= kx_hi)
                if not empty:
                    ky, kx, krows, kvalid = _image_key_offsets(ky0, kx0, GH, GW, G, KEY_H, KEY_W)
                    kvalid = kvalid & (ky <= ky_hi) & (kx <= kx_hi)
                    k = _load_rows(k_base, krows, kvalid, skn, skd, D, BLOCK_D)
                    v = _load_rows(v_base, krows, kvalid, svn, svd, DV, BLOCK_DV)
                    s = _masked_scores(q, k, qy, qx, ky, kx, kvalid, full, qk_scale, R, GH, GW, WINDOW, PRECISION)
                    m_i, l_i, acc = _step(m_i, l_i, acc, s, q, k, v, d_out, lse, delta, q_valid, krows, kvalid,
                                          dk_base, dv_base, sgn, sgd, D, DV, scale, BACKWARD, BLOCK_D, BLOCK_DV,
                                          PRECISION)
    if BACKWARD:
        offs_d = tl.arange(0, BLOCK_D)
        dq_ptrs = DQ + o_off + rows[:, None] * son + offs_d[None, :].to(tl.int64) * sod
        tl.store(dq_ptrs, acc.to(DQ.dtype.element_ty), mask=q_valid[:, None] & (offs_d[None, :] < D))
    else:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out_ptrs = OUT + o_off + rows[:, None] * son + offs_dv[None, :].to(tl.int64) * sod
        tl.store(out_ptrs, (acc / l_safe[:, None]).to(OUT.dtype.element_ty),
                 mask=q_valid[:, None] & (offs_dv[None, :] < DV))
        tl.store(LSE + bh.to(tl.int64) * n_total + rows, m_i + tl.log2(l_safe), mask=q_valid)


# ---------------------------------------------------------------------------------------------------------------
# Launchers.


# Every (query patch, key sub-tile) shape the launchers may choose from, largest patch first: the halo is then
# the smallest share of the keys walked. The chooser takes the first config the target holds without spilling,
# starting where the window size and head dim say.
SHAPES = (((16, 16), (8, 16)), ((8, 16), (8, 16)), ((8, 16), (4, 16)), ((8, 8), (4, 16)), ((4, 16), (4, 16)),
          ((8, 8), (2, 16)), ((4, 8), (2, 16)), ((4, 8), (1, 16)), ((4, 4), (2, 16)), ((4, 4), (4, 4)))
# The interpreter tests run each shape.
CONFIGS = tuple({"TILE": tile, "KEY": key, "num_warps": 4, "num_stages": 2} for tile, key in SHAPES)


@cache
def candidates(grid: tuple[int, int], radius: int, head_dim: int, backward: bool,
               element_size: int = 2) -> tuple[dict, ...]:
    """Configs in order of preference for one problem. Larger windows start at larger patches; head dims above 64
    (a 128-wide padded feature block) start smaller and take 8 warps, the backward (a d-wide fp32 dQ accumulator,
    fp32 atomics into dK and dV) smaller still, fp32 operands one shape smaller again."""
    start = 0 if radius >= 16 and min(grid) >= 16 else 1 if radius >= 6 and min(grid) >= 8 else 3
    wide = block_dim(head_dim) > 64
    start = max(start, (5 if backward else 3) if wide else (2 if backward else 0)) + (element_size > 2)
    out = []
    for tile, key in SHAPES[start:]:
        warps = 8 if wide or tile[0] * tile[1] >= 256 else 4
        out.append({"TILE": tile, "KEY": key, "num_warps": warps, "num_stages": 2})
    return tuple(out)


def _launch(q, k, v, out, lse, d_out, delta, dq, dk_buf, dv_buf, *, layout, grid, radius, window, num_global,
            scale, config, backward) -> Launch:
    (batch, n, heads, d), q_strides = bnhd(q, layout)
    (tile_h, tile_w), (key_h, key_w) = config["TILE"], config["KEY"]
    n_tiles_x = triton.cdiv(grid[1], tile_w)
    n_image_tiles = triton.cdiv(grid[0], tile_h) * n_tiles_x
    programs = n_image_tiles + triton.cdiv(num_global, tile_h * tile_w)
    block_d = block_dim(d)
    return Launch(
        _kernel, (programs, batch * heads),
        (q, k, v, out, lse, d_out, delta, dq, dk_buf, dv_buf, *q_strides, *bnhd(k, layout)[1], *bnhd(v, layout)[1],
         *bnhd(out, layout)[1], *bnhd(dk_buf, "bnhd")[1], num_global, grid[0], grid[1], heads, d, v.shape[-1],
         radius, scale, scale * LOG2E, n_tiles_x, n_image_tiles),
        {"WINDOW": WINDOW_CODES[window], "BACKWARD": backward, "TILE_H": tile_h, "TILE_W": tile_w, "KEY_H": key_h,
         "KEY_W": key_w, "BLOCK_D": block_d, "BLOCK_DV": block_d, "PRECISION": dot_precision(q.dtype),
         "num_warps": config["num_warps"], "num_stages": config["num_stages"]},
        config)


def _choose(q, layout, options, backward: bool, forced: dict | None) -> dict:
    d = q.shape[-1]
    configs = candidates(options["grid"], options["radius"], d, backward, q.element_size())

    def build(config):  # called only when the choice is not cached yet; the buffers are stand-ins for compiling
        (batch, n, heads, _), _ = bnhd(q, layout)
        lse = _empty((batch * heads, n), q, torch.float32)
        out = _empty(q.shape, q)  # never q itself: autotuning launches forward probes
        buf = _empty((batch, n, heads, d), q, torch.float32)
        return _launch(q, q, q, out, lse, out, lse, out, buf, buf, backward=backward, config=config, **options)

    dtype = str(q.dtype).removeprefix("torch.")
    problem = f"{dtype} d={d} {options['window']} window, patches from {configs[0]['TILE']}"
    return choose("local_attention." + ("backward" if backward else "forward"), problem, configs, build,
                  pure=not backward, forced=forced)


def forward(q, k, v, *, layout, grid, radius, window, num_global, scale, config=None):
    """Forward of :func:`linfuse.kernels.local_attention` (arguments validated there; d_v == d_k): the output and
    each row's log-sum-exp (B·H, N) in fp32, which the backward reads. When q, k or v needs a gradient the
    backward's config is chosen here too, so a problem that cannot run is refused before any work."""
    (batch, n, heads, _), _ = bnhd(q, layout)
    options = dict(layout=layout, grid=tuple(grid), radius=radius, window=window, num_global=num_global, scale=scale)
    forward_config = _choose(q, layout, options, False, config)
    if any(t.requires_grad for t in (q, k, v)):
        _choose(q, layout, options, True, config)
    out = _empty(q.shape, q)
    lse = _empty((batch * heads, n), q, torch.float32)
    # unused slots take any tensor
    _launch(q, k, v, out, lse, out, lse, out, out, out, backward=False, config=forward_config, **options).run()
    return out, lse


def backward(q, k, v, out, lse, d_out, *, layout, grid, radius, window, num_global, scale, config=None):
    """(dq, dk, dv), each contiguous in q's layout, from the forward's output and log-sum-exp."""
    options = dict(layout=layout, grid=tuple(grid), radius=radius, window=window, num_global=num_global, scale=scale)
    backward_config = _choose(q, layout, options, True, config)
    d_out = d_out.contiguous() if d_out.stride() != out.stride() else d_out
    (batch, n, heads, d), _ = bnhd(q, layout)
    seq_dim = 1 if layout == "bnhd" else 2
    delta = (d_out.float() * out.float()).sum(-1)  # Δ_i = dO_i · O_i, in q's layout without d
    delta = (delta if layout == "bhnd" else delta.transpose(1, 2)).reshape(batch * heads, n).contiguous()
    dq = _empty(out.shape, out)
    dk_buf = torch.zeros((batch, n, heads, d), device=q.device, dtype=torch.float32)
    dv_buf = torch.zeros_like(dk_buf)
    _launch(q, k, v, out, lse, d_out, delta, dq, dk_buf, dv_buf, backward=True, config=backward_config,
            **options).run()
    dk, dv = (buf if seq_dim == 1 else buf.transpose(1, 2) for buf in (dk_buf, dv_buf))
    return dq, dk.to(k.dtype, memory_format=torch.contiguous_format), dv.to(v.dtype,
                                                                           memory_format=torch.contiguous_format)
