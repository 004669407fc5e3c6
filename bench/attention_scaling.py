"""One SD-1.5 self-attention layer (320 channels, 8 heads of 40): LinFusion linear attention vs the original SDPA.

    python bench/attention_scaling.py [--tokens 4096 16384 65536] [--repeats 3] [--json out.json]

For each token count N and each processor, a fresh child process builds the layer (diffusers ``Attention``, random
weights, fp32, batch 1, ``torch.no_grad``), makes one warm-up call at N = 256, then resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``), runs the timed calls at N and reads ``VmHWM``. Time is the median of the
repeats (one repeat when a call takes over 20 s); peak memory is VmHWM minus the resident size just before the
timed calls, i.e. what the attention itself needed. Ratios are SDPA / linear, from this one run. Before timing,
the linear processor is checked against a direct O(N²) formula at N = 256.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from procstat import memory_kib, reset_peak  # bench/procstat.py (scripts run as bench/NAME.py)

from linfuse.linearize import LinFusionAttnProcessor

WIDTH, HEADS = 320, 8
SLOW_CALL_S = 20.0


def build_layer(kind: str) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=WIDTH, heads=HEADS, dim_head=WIDTH // HEADS, out_bias=True).eval()
    if kind == "linear":
        attn.set_processor(LinFusionAttnProcessor(WIDTH, HEADS))  # random mixers: their cost is part of the layer
    else:
        attn.set_processor(AttnProcessor2_0())
    return attn


def measure(kind: str, tokens: int, repeats: int) -> dict:
    """Run in a child process: time and peak memory of one layer at `tokens` tokens."""
    torch.set_num_threads(os.cpu_count())
    attn = build_layer(kind)
    x = torch.randn(1, tokens, WIDTH)
    with torch.no_grad():
        attn(x[:, :256])
        baseline = reset_peak()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = attn(x)
            times.append(time.perf_counter() - start)
            del out
            if times[-1] > SLOW_CALL_S:
                break
        peak = memory_kib("VmHWM")
    return {"kind": kind, "tokens": tokens, "ms": 1e3 * statistics.median(times), "calls": len(times),
            "peak_mib": (peak - baseline) / 1024}


def check_linear_layer() -> float:
    """Max abs difference between the linear processor and the direct formula at N = 256."""
    attn = build_layer("linear")
    x = torch.randn(1, 256, WIDTH, dtype=torch.float64)
    attn.double()
    with torch.no_grad():
        got = attn(x)
        p = attn.processor

        def heads(h):
            return h.unflatten(-1, (HEADS, -1)).transpose(1, 2)

        q = heads(attn.to_q(x + p.to_q_(x)))
        k = heads(attn.to_k(x + p.to_k_(x)))
        v = heads(attn.to_v(x))
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        scores = q @ k.mT
        o = scores @ v / (scores.sum(-1, keepdim=True) + 1e-4 * k.shape[-2])
        expected = attn.to_out[0](o.transpose(1, 2).flatten(2))
    return (got - expected).abs().max().item()


def run_child(kind: str, tokens: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(tokens), str(repeats)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "TOKENS", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return

    error = check_linear_layer()
    if error > 1e-8:
        raise SystemExit(f"linear processor differs from the direct formula by {error:.2e}; not benchmarking")
    print(f"{cpu_name()}, {os.cpu_count()} threads, torch {torch.__version__}; SD-1.5 self-attention, "
          f"{WIDTH} channels, {HEADS} heads, fp32, batch 1; linear vs direct formula at N=256: {error:.1e}")
    print(f"{'N':>7} {'SDPA ms':>10} {'linear ms':>10} {'time ratio':>10} {'SDPA MiB':>9} {'linear MiB':>10}"
          f" {'mem ratio':>9}")
    rows = []
    for tokens in args.tokens:
        sdpa, linear = (run_child(kind, tokens, args.repeats) for kind in ("sdpa", "linear"))
        row = {"tokens": tokens, "sdpa": sdpa, "linear": linear, "time_ratio": sdpa["ms"] / linear["ms"],
               "memory_ratio": sdpa["peak_mib"] / max(linear["peak_mib"], 1e-9)}
        rows.append(row)
        print(f"{tokens:>7} {sdpa['ms']:>10.1f} {linear['ms']:>10.1f} {row['time_ratio']:>9.2f}x "
              f"{sdpa['peak_mib']:>9.1f} {linear['peak_mib']:>10.1f} {row['memory_ratio']:>8.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
