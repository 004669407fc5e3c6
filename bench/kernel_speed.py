"""Kernel benchmarks: linear attention as bandwidth, local attention as effective TFLOP/s.

    python bench/kernel_speed.py            # on a CUDA GPU: Triton kernels vs copy bandwidth, SDPA and FlexAttention
    python bench/kernel_speed.py --quick    # smaller problems

On CUDA:
* linear attention (bf16, d = 64, B = 1, 16 heads): achieved GB/s of the minimal traffic 8·N·d bytes per head
  (read q, k, v and write o once) next to a device-to-device copy bandwidth measured in the same run; the ratio is
  the acceptance figure (target >= 0.8 for B·H·N >= 10⁶).
* local attention, FLUX-4K problem (256×256 image tokens, 24 heads, d = 128, circle radius 40, bf16): effective
  TFLOP/s = 4·d·heads·(visible pairs) / time, next to dense SDPA (all N² pairs, its own TFLOP/s and time) and
  FlexAttention compiled with the same mask.
On CPU it times the PyTorch reference paths (the Triton interpreter is a correctness tool, not timed).
Times are medians from triton.testing.do_bench on CUDA, of repeated calls on CPU.
"""

import argparse
import inspect
import statistics
import time

import torch

from linfuse.kernels import linear_attention, local_attention
from linfuse.kernels.local_attention_reference import count_visible_pairs, local_attention_mask


def cpu_time_ms(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def gpu_time_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def copy_bandwidth_gbs() -> float:
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = gpu_time_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


def bench_linear(device: str, tokens: list[int], heads: int = 16, d: int = 64) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    timer = gpu_time_ms if device == "cuda" else cpu_time_ms
    copy = copy_bandwidth_gbs() if device == "cuda" else None
    if copy:
        print(f"device-to-device copy: {copy:.0f} GB/s")
    print(f"linear attention, {dtype}, B=1, H={heads}, d={d}")
    print(f"{'N':>9} {'B*H*N':>10} {'backend':>10} {'ms':>9} {'GB/s':>8} {'of copy':>8}")
    for n in tokens:
        q, k, v = (torch.randn(1, n, heads, d, device=device, dtype=dtype) for _ in range(3))
        minimal_bytes = 8 * n * d * heads if dtype == torch.bfloat16 else 16 * n * d * heads
        for backend in (["triton", "reference"] if device == "cuda" else ["reference"]):
            ms = timer(lambda b=backend, q=q, k=k, v=v: linear_attention(q, k, v, backend=b))
            gbs = minimal_bytes / ms / 1e6
            share = f"{gbs / copy:7.2f}" if copy else "      -"
            print(f"{n:>9} {n * heads:>10} {backend:>10} {ms:>9.3f} {gbs:>8.2f} {share}")


def local_block_mask(grid, radius: int, num_global: int, *, block: int = 128, window: str = "circle", device=None,
                     band_elements: int = 1 << 26):
    """FlexAttention's BlockMask of :func:`linfuse.kernels.local_attention`'s visibility, built from the tiles
    themselves: one band of query blocks at a time against every key, so memory stays O(band · N), never N².

    A (query block, key block) pair is *full* when every token pair in it is visible (FlexAttention skips the
    mask there), *partial* when some are (``mask_mod`` decides per pair), and left out otherwise. Padding past N is
    invisible to "some" and ignored by "every". Returns (block_mask, mask_mod).
    """
    from torch.nn.attention.flex_attention import BlockMask

    from linfuse.kernels.local_attention_reference import window_contains

    width, n = grid[1], num_global + grid[0] * grid[1]
    blocks = -(-n // block)
    index = torch.arange(blocks * block, device=device, dtype=torch.int32)
    ys, xs = (index - num_global) // width, (index - num_global) % width
    text, valid = index < num_global, index < n
    some = torch.zeros(blocks, blocks, dtype=torch.bool, device=device)
    every = torch.zeros_like(some)
    band = max(1, band_elements // (blocks * block * block))  # query blocks per band
    for first in range(0, blocks, band):
        rows = slice(first * block, min(blocks, first + band) * block)
        seen = window_contains(ys[rows, None], xs[rows, None], ys[None], xs[None], radius=radius, window=window,
                               grid=grid) | text[rows, None] | text[None]
        pad = ~(valid[rows, None] & valid[None])
        some[first:first + band] = (seen & ~pad).view(-1, block, blocks, block).any(3).any(1)
        every[first:first + band] = (seen | pad).view(-1, block, blocks, block).all(3).all(1)
    partial = some & ~every

    def listed(flags):  # (1, 1, Q blocks) counts and (1, 1, Q blocks, KV blocks) indices, listed ones first
        order = torch.argsort(flags.to(torch.int8), dim=-1, descending=True, stable=True)
        return flags.sum(-1, dtype=torch.int32)[None, None], order.to(torch.int32)[None, None]

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = (q_idx - num_global) // width, (q_idx - num_global) % width
        ky, kx = (kv_idx - num_global) // width, (kv_idx - num_global) % width
        local = window_contains(qy, qx, ky, kx, radius=radius, window=window, grid=grid)
        return (q_idx < num_global) | (kv_idx < num_global) | local

    extra = {"seq_lengths": (n, n)} if "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters else {}
    mask = BlockMask.from_kv_blocks(*listed(partial), *listed(every), BLOCK_SIZE=block, mask_mod=mask_mod, **extra)
    return mask, mask_mod


def flex_attention_fn(q, k, v, grid, radius, num_global, *, compiled: bool = True, block: int = 128):
    """FlexAttention with local attention's mask, as a zero-argument callable; the BlockMask comes from
    :func:`local_block_mask` (no N² temporaries, unlike an eager ``create_block_mask``)."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask, _ = local_block_mask(grid, radius, num_global, block=block, device=q.device)
    attend = torch.compile(flex_attention) if compiled else flex_attention
    return lambda: attend(q, k, v, block_mask=block_mask)


def bench_local(device: str, grid: tuple[int, int], radius: int, heads: int, d: int, num_global: int) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = num_global + grid[0] * grid[1]
    pairs = count_visible_pairs(grid, radius, "circle", num_global)
    window_flops = 4 * d * heads * pairs
    print(f"local attention, {dtype}, grid {grid[0]}x{grid[1]}, {num_global} global tokens, H={heads}, d={d}, "
          f"circle r={radius}: {pairs / n:.0f} keys per query on average ({100 * pairs / n**2:.2f}% of dense)")
    q, k, v = (torch.randn(1, heads, n, d, device=device, dtype=dtype) for _ in range(3))
    options = dict(grid=grid, radius=radius, num_global=num_global, layout="bhnd")
    rows = []
    if device == "cuda":
        rows.append(("linfuse triton", gpu_time_ms(lambda: local_attention(q, k, v, backend="triton", **options)),
                     window_flops))
        rows.append(("flex attention", gpu_time_ms(flex_attention_fn(q, k, v, grid, radius, num_global)),
                     window_flops))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        rows.append(("dense SDPA", gpu_time_ms(lambda: sdpa(q, k, v)), 4 * d * heads * n * n))
    else:
        rows.append(("reference", cpu_time_ms(lambda: local_attention(q, k, v, backend="reference", **options), 1),
                     window_flops))
        if n <= 4096:
            mask = local_attention_mask(grid, radius, "circle", num_global)
            sdpa = torch.nn.functional.scaled_dot_product_attention
            rows.append(("SDPA + mask", cpu_time_ms(lambda: sdpa(q, k, v, attn_mask=mask), 1), window_flops))
    print(f"{'kernel':>16} {'ms':>10} {'TFLOP/s':>9}  (window FLOPs, except dense SDPA: all pairs)")
    for name, ms, flops in rows:
        print(f"{name:>16} {ms:>10.2f} {flops / ms / 1e9:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    if device == "cuda":
        bench_linear(device, [4096, 65536] if args.quick else [4096, 65536, 1 << 20, 1 << 22])
        bench_local(device, (128, 128) if args.quick else (256, 256), 40, 24, 128, 512)
    else:
        bench_linear(device, [4096, 65536] if args.quick else [4096, 65536, 1 << 18])
        bench_local(device, (48, 48), 8, 4, 64, 64)
        if not args.quick:
            bench_local(device, (128, 128), 16, 4, 64, 128)


if __name__ == "__main__":
    main()
