"""One SD-1.5 self-attention layer (320 channels, 8 heads of 40): original SDPA processor vs LinFusion linear.

    python bench/attention_scaling.py [--tokens 4096 16384 65536] [--repeats 3] [--json rows.json]

What is measured: a diffusers ``Attention(query_dim=320, heads=8, dim_head=40)`` (random weights, fp32, batch 1,
CPU, ``torch.no_grad``) called as ``attn(hidden_states)`` with hidden_states of shape (1, N, 320), once with
diffusers' ``AttnProcessor2_0`` (torch SDPA) and once with ``LinFusionAttnProcessor(320, 8, mid_dim=320)`` with
zeroed mixers (the mixers still run; zeroing only changes their values, not their cost). Both include the q/k/v and
output projections.

How: every (processor, N) case runs in a fresh child process (this script re-invoked with ``--child``), with
``torch.set_num_threads(os.cpu_count())``. The child builds the layer and the input, then

1. resets the kernel's peak-RSS counter (writes 5 to ``/proc/self/clear_refs``, which sets VmHWM to the current
   VmRSS) and takes the baseline = VmRSS, right before the first call at N;
2. makes one untimed warm-up call at the same N;
3. makes ``--repeats`` timed calls (``time.perf_counter``); if the warm-up call took longer than ``--slow-call-s``
   (default 60 s) only one timed call is made, and the script prints a note saying so;
4. reads VmHWM from ``/proc/self/status``.

Time is the median of the timed calls. Peak memory is VmHWM minus the baseline, in MiB: the most resident memory the
warm-up and timed calls needed above the layer + input (the output tensor included; each output is freed before the
next call). ``ru_maxrss`` (getrusage) cannot be reset, so it would hide peaks below the import-time high-water mark;
its increase over the same interval is only stored in the JSON as a cross-check (and used instead of VmHWM if
clear_refs is not writable). Ratios are SDPA / linear, all from this one run.

Honesty checks before timing: at N = 256 the linear processor (zero mixers, fp32) must match a direct O(N²) formula
of mean-form ELU+1 linear attention, O_i = Σ_j (φ(q_i)·φ(k_j)) v_j / (Σ_j φ(q_i)·φ(k_j) + 1e-4·N) per head with
q, k, v from ``attn.to_q/to_k/to_v`` and the result through ``attn.to_out[0]`` (computed in fp64), within 1e-4; and
every child reports its output shape, which must be (1, N, 320) for both processors.
"""

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import diffusers
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from linfuse.linearize import LinFusionAttnProcessor

WIDTH, HEADS = 320, 8
CHECK_TOKENS, CHECK_TOL = 256, 1e-4
KINDS = ("sdpa", "linear")


def build_layer(kind: str) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=WIDTH, heads=HEADS, dim_head=WIDTH // HEADS).eval()
    if kind == "linear":
        proc = LinFusionAttnProcessor(dim=WIDTH, heads=HEADS, mid_dim=WIDTH)
        proc.zero_mixers()
        attn.set_processor(proc)
    else:
        attn.set_processor(AttnProcessor2_0())
    return attn


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Set VmHWM to the current VmRSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_call(attn: Attention, x: torch.Tensor) -> tuple[float, tuple]:
    start = time.perf_counter()
    out = attn(x)
    elapsed = time.perf_counter() - start
    return elapsed, tuple(out.shape)  # `out` is freed on return


def measure(kind: str, tokens: int, repeats: int, slow_call_s: float) -> dict:
    """In a child process: warm-up + timed calls of one layer at `tokens` tokens, with the peak RSS above baseline."""
    torch.set_num_threads(os.cpu_count())
    attn = build_layer(kind)
    x = torch.randn(1, tokens, WIDTH)
    with torch.no_grad():
        hwm_reset = reset_peak_rss()
        base_rss, base_ru = status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        warmup_s, shape = timed_call(attn, x)
        calls = 1 if warmup_s > slow_call_s else repeats
        times = [timed_call(attn, x)[0] for _ in range(calls)]
        peak_hwm, peak_ru = status_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru_mib = (peak_ru - base_ru) / 1024
    return {"kind": kind, "tokens": tokens, "shape": shape, "ms": 1e3 * statistics.median(times),
            "times_ms": [1e3 * t for t in times], "warmup_ms": 1e3 * warmup_s, "calls": calls,
            "peak_mib": (peak_hwm - base_rss) / 1024 if hwm_reset else ru_mib, "peak_mib_ru_maxrss": ru_mib,
            "baseline_mib": base_rss / 1024, "memory_method": "VmHWM-reset" if hwm_reset else "ru_maxrss"}


def direct_linear_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """O(N²) mean-form ELU+1 linear attention through the layer's own projections (eps 1e-4)."""

    def phi_heads(h: torch.Tensor) -> torch.Tensor:
        return h.unflatten(-1, (HEADS, -1)).transpose(1, 2)

    q = torch.nn.functional.elu(phi_heads(attn.to_q(x))) + 1
    k = torch.nn.functional.elu(phi_heads(attn.to_k(x))) + 1
    v = phi_heads(attn.to_v(x))
    scores = q @ k.mT  # (B, H, N, N)
    o = scores @ v / (scores.sum(-1, keepdim=True) + 1e-4 * x.shape[1])
    return attn.to_out[0](o.transpose(1, 2).flatten(2))


def check_processors() -> float:
    """Linear (zero mixers) vs the direct formula at N = 256; both processors' output shapes. Returns max |error|."""
    x = torch.randn(1, CHECK_TOKENS, WIDTH, generator=torch.Generator().manual_seed(1))
    linear, sdpa = build_layer("linear"), build_layer("sdpa")
    with torch.no_grad():
        got, sdpa_out = linear(x), sdpa(x)
        expected = direct_linear_attention(copy.deepcopy(linear).double(), x.double())
    assert got.shape == sdpa_out.shape == x.shape, (got.shape, sdpa_out.shape)
    error = (got.double() - expected).abs().max().item()
    assert error <= CHECK_TOL, f"linear processor differs from the direct formula by {error:.2e} at N={CHECK_TOKENS}"
    return error


def run_child(kind: str, tokens: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, str(tokens), "--repeats", str(args.repeats),
           "--slow-call-s", str(args.slow_call_s)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"child {kind} N={tokens} failed (rc {result.returncode}):\n{result.stderr[-4000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert tuple(row["shape"]) == (1, tokens, WIDTH), f"{kind} N={tokens}: output shape {row['shape']}"
    return row


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def print_header(error: float) -> None:
    print(f"CPU: {cpu_name()}; {os.cpu_count()} threads; torch {torch.__version__}; diffusers {diffusers.__version__}")
    print(f"SD-1.5 self-attention, {WIDTH} channels, {HEADS} heads, fp32, batch 1, no_grad; "
          f"linear vs direct O(N^2) formula at N={CHECK_TOKENS}: max |err| {error:.1e}")
    print(f"{'N':>7} {'SDPA ms':>11} {'linear ms':>10} {'time ratio':>11} {'SDPA MiB':>9} {'linear MiB':>11}"
          f" {'mem ratio':>10}")


def print_row(row: dict) -> None:
    sdpa, linear = row["sdpa"], row["linear"]
    print(f"{row['tokens']:>7} {sdpa['ms']:>11.1f} {linear['ms']:>10.1f} {row['time_ratio']:>10.1f}x "
          f"{sdpa['peak_mib']:>9.1f} {linear['peak_mib']:>11.1f} {row['memory_ratio']:>9.2f}x", flush=True)


def print_notes(rows: list[dict], repeats: int) -> None:
    print(f"time: median of {repeats} timed calls after 1 warm-up call at the same N; memory: peak RSS (VmHWM) above "
          "the RSS right before the warm-up call")
    for row in rows:
        for kind in KINDS:
            case = row[kind]
            if case["calls"] != repeats:
                print(f"note: {kind} N={row['tokens']}: warm-up took {case['warmup_ms'] / 1e3:.0f} s, so "
                      f"{case['calls']} timed call(s) instead of {repeats}")
            if case["memory_method"] != "VmHWM-reset":
                print(f"note: {kind} N={row['tokens']}: /proc/self/clear_refs not writable, memory from ru_maxrss")


def bench(args: argparse.Namespace) -> list[dict]:
    rows = []
    for tokens in args.tokens:
        sdpa, linear = (run_child(kind, tokens, args) for kind in KINDS)
        row = {"tokens": tokens, "sdpa": sdpa, "linear": linear, "time_ratio": sdpa["ms"] / linear["ms"],
               "memory_ratio": sdpa["peak_mib"] / max(linear["peak_mib"], 1e-9)}
        print_row(row)
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median reported)")
    parser.add_argument("--slow-call-s", type=float, default=60.0,
                        help="if the warm-up call takes longer than this, make one timed call only")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.repeats, args.slow_call_s)))
        return
    start = time.perf_counter()
    print_header(check_processors())
    rows = bench(args)
    print_notes(rows, args.repeats)
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
