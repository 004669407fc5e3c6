"""Eager vs ``torch.compile(unet, fullgraph=True)`` for the full-width SD-1.5 UNet (its config, random weights), with
LinFusion's linear attention and with the model's own SDPA attention, batch 1.

    python bench/compile.py [--latents 64 128] [--methods linfusion sdpa] [--device cpu] [--dtype fp32]
                            [--budget-s 3600] [--tiny]

Prints one row per (method, latent): the eager forward, the compiled forward (median of the timed repeats after a
warm-up), the speed-up and the seconds the first compiled call took (compilation plus one forward). Each latent is
compiled on its own (static shapes), one UNet in memory at a time. The core is :func:`compile_rows`, which
bench/gpu_check.py calls on the GPU.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import full_width  # noqa: E402  (the full-width UNet builder)

import linfuse  # noqa: E402

METHODS = ("linfusion", "sdpa")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1}


def compile_rows(*, device: str, dtype: torch.dtype, latents: list[int], methods: list[str],
                 seconds_left: Callable[[], float], tiny: bool, backend: str = "inductor") -> list[dict]:
    """One row per (method, latent): {"method", "latent", "eager_ms", "compiled_ms", "speedup", "compile_s"}, or
    {"method", "latent", "skipped": reason} once ``seconds_left()`` is spent. ``tiny`` builds a narrow one-layer
    UNet of the same structure (dry runs); ``backend`` is torch.compile's (dry runs take "eager": dynamo's one
    graph is proven without inductor's code generation, which costs minutes of CPU per UNet)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods must be among {', '.join(METHODS)}; got {sorted(unknown)}")
    rows = []
    for latent in latents:
        for method in methods:
            if seconds_left() <= 0:
                rows.append({"method": method, "latent": latent, "skipped": "out of time"})
                continue
            rows.append(_row(method, latent, device, dtype, tiny, backend))
            torch._dynamo.reset()
    return rows


def _row(method: str, latent: int, device: str, dtype: torch.dtype, tiny: bool, backend: str) -> dict:
    unet = full_width.build("sd15", **(TINY if tiny else {}))
    if method == "linfusion":
        linfuse.linearize(unet)
    unet = unet.to(device, dtype)
    inputs = {key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
              for key, value in full_width.inputs(unet, latent).items()}
    repeats = 1 if tiny else 3
    with torch.no_grad():
        eager_ms = _time_ms(lambda: unet(**inputs).sample, device, repeats)
        compiled = torch.compile(unet, fullgraph=True, dynamic=False, backend=backend)
        start = time.perf_counter()
        compiled(**inputs)
        _sync(device)
        compile_s = time.perf_counter() - start
        compiled_ms = _time_ms(lambda: compiled(**inputs).sample, device, repeats)
    return {"method": method, "latent": latent, "backend": backend, "eager_ms": eager_ms, "compiled_ms": compiled_ms,
            "speedup": eager_ms / compiled_ms, "compile_s": compile_s}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: str, repeats: int) -> float:
    """One warm-up call, then the median of ``repeats`` timed calls."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES)
    parser.add_argument("--budget-s", type=float, default=3600.0, help="no new row starts after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="a narrow one-layer UNet (a quick check of the script)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {args.device} {args.dtype}, {torch.get_num_threads()} threads", flush=True)
    for latent in args.latents:  # one latent at a time, so each row is printed as soon as it is measured
        rows = compile_rows(device=args.device, dtype=DTYPES[args.dtype], latents=[latent], methods=args.methods,
                            seconds_left=lambda: args.budget_s - (time.perf_counter() - start), tiny=args.tiny)
        _print(rows)
    return 0


def _print(rows: list[dict]) -> None:
    for row in rows:
        if "skipped" in row:
            print(f"{row['method']:<10} latent {row['latent']}²: skipped ({row['skipped']})")
        else:
            print(f"{row['method']:<10} latent {row['latent']}²: eager {row['eager_ms']:,.0f} ms, compiled "
                  f"{row['compiled_ms']:,.0f} ms, {row['speedup']:.2f}× (first compiled call {row['compile_s']:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
