"""One-shot GPU validation and benchmark of linfuse's kernels; writes results.json and results.md to --out.

    python bench/gpu_check.py --out runs/gpu [--budget 470]                     # on one CUDA GPU, 8 minutes at most
    TRITON_INTERPRET=1 python bench/gpu_check.py --out runs/gpu-dry --dry-run    # the same code, tiny sizes, CPU

Sections, most valuable first, each with its own deadline (its share of the budget left, checked before every case
and inside long loops; a section that runs out writes what it has and records ``cut_short``). results.json and
results.md are rewritten after every section; results.md opens with the three targets, met or not.

1. environment: GPU, driver, CUDA, torch, Triton, diffusers, the Triton target's limits (hardware.active_limits);
2. configs: every model problem (scaled to small token counts), fp16 and bf16, forward and gradients of the Triton
   kernels against the fp32 reference, for the first and the second config that fits each kernel; each row names
   the configs its kernels launched with;
3. linear bandwidth: B·H = 16, d = 40 and 64, N = 2^14 … 2^20, fp16 and bf16; GB/s of the minimal traffic (read q,
   k, v, write o: 8·N·d bytes per head) against a device-to-device copy measured in the same run;
4. SD-1.5 UNet (full width, random weights, fp16, batch 1) at latents 128², 256², 512², 1024²: linfusion, then
   SDPA, size by size; a size runs only when the time measured at the previous size, grown by the method's scaling
   (tokens for linfusion, tokens² for SDPA), fits; sizes the preflight refuses (a tensor ≥ 2^31 elements, e.g. the
   GEGLU at 1024², or above the memory cap) are skipped with the reason;
5. local attention FLUX-4K: 256×256 image tokens + 512 text, 24 heads, d = 128, circle r = 40, bf16: the Triton
   kernel, dense SDPA (all pairs), then FlexAttention (compiled) with a BlockMask built from the tiles' visibility
   (bench/kernel_speed.local_block_mask, no N² memory), in effective TFLOP/s = 4·d·heads·visible pairs / time;
6. the compiled UNet: bench/compile.py's compile_rows (eager vs torch.compile), when that file exists;
7. a 16384² SD-1.5 lean job (LinFusion, fp16): the largest UNet call of the 16K stage, batch 2, lean mode with the
   skips parked in host memory, after a warm-up call at a small latent: time, finiteness, and
   torch.cuda.max_memory_allocated against the planner's trace of the same call (and plain's);
8. the FLUX.1-dev transformer (its config, random weights made in bf16 on the device): SDPA, then CLEAR r = 16, at
   1024², 2048², 4096² (4,096 to 65,536 image tokens + 512 text), size by size like section 4.

Device memory at each section's peak (weights + the largest case that runs; sections release everything and reset
the peak counter between them), by arithmetic or by the planner's trace (memory_trace.trace on the meta device,
× 1.1 allocator overhead, measured here for these configs); gpu_budget.MEMORY_CAP (70 GiB) refuses any traced case
above it before it runs:

| section | largest case | peak GiB |
|---|---|---:|
| configs | scaled problems (≤ 4096 tokens, 2 heads): the fp32 reference's N×N scores at most | < 1 |
| linear_bandwidth | N = 2^20, 16 heads, d = 64, fp16: q, k, v, o 2 GiB each (the 2 × 1 GiB copy test before) | 9 |
| unet_sd15 | two fp16 UNets (1.7 + 1.6) + a latent-512² call (trace: 4.5); 1024² refused (2.7e9 elements) | 8 |
| local_flux4k | q, k, v and three outputs, 0.38 GiB each; BlockMask bands of 2^26 int32 elements; Flex workspace | 4 |
| compiled_unet | bench/compile.py's own cases (latents ≤ 512²; as unet_sd15) | 8 |
| lean_16k | fp16 UNet 1.7 + the batch-2 latent-2048² lean call (trace: 11.9; 12.7 on the host)¹ | 14 |
| flux_clear | weights 22.2 (bf16) + a 4096² block: 66,048 tokens × 3072, 0.38 GiB a tensor, ~16 alive | 29 |

¹ plain's trace of the same call, 143 GiB and a tensor of 2.1e10 elements, is reported, never run.

--dry-run runs every section on the CPU at tiny sizes, the kernels through Triton's interpreter (set
TRITON_INTERPRET=1 before Python starts; the script sets it for itself when it is unset), so the launchers, the
configs they choose and every section's bookkeeping (deadlines, size choice, records) run before a GPU does.
"""

import time

START = time.perf_counter()  # the budget counts from here, imports included

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_budget  # noqa: E402  (bench/ helpers: deadlines, memory release, launch recording)
import gpu_models  # noqa: E402  (the model sections: UNet, compiled UNet, 16K lean, FLUX)
import gpu_report  # noqa: E402  (results.md)

TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}  # RMS error / RMS of the reference
FLEX_FIRST_CALL_S = {"cuda": 30.0, "cpu": 8.0}  # FlexAttention's first call: a compile on CUDA, tracing on the CPU


class Check:
    """Shared state of one run: device, sizes, budget, and the results written after each section."""

    def __init__(self, out: Path, dry_run: bool, budget_s: float):
        self.out, self.dry_run, self.budget_s = out, dry_run, budget_s
        self.device = "cpu" if dry_run else "cuda"
        self.results: dict = {"dry_run": dry_run, "budget_s": budget_s, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - START

    def time_ms(self, fn) -> float:
        """do_bench's median on CUDA; one timed call in a dry run (the interpreter compiles nothing)."""
        if self.dry_run:
            return 1e3 * gpu_budget.timed(fn)[1]
        import kernel_speed as kernel_bench

        return kernel_bench.gpu_time_ms(fn)

    def run(self, name: str, section, remaining: list[str]) -> None:
        budget = gpu_budget.Budget(self.elapsed, gpu_budget.deadline_for(name, remaining, self.elapsed(),
                                                                         self.budget_s))
        began = time.perf_counter()
        try:
            result = section(self, budget)
        except Exception:  # a failing section is reported with what it measured, and the others still run
            result = {"error": traceback.format_exc(limit=8)}
        result = budget.partial | result
        result.setdefault("skipped", budget.skipped)
        result["cut_short"] = budget.cut_short
        result["seconds"] = round(time.perf_counter() - began, 1)
        gpu_budget.release(self.device)
        self.results["sections"][name] = result
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.json", json.dumps(self.results, indent=1, default=str)),
                           ("results.md", gpu_report.markdown(self.results))):
            partial = self.out / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, self.out / name)


# ---------------------------------------------------------------------------------------------------------------
# Kernel sections.


def environment(check: Check, budget: gpu_budget.Budget) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": check.device, "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    for name in ("triton", "diffusers", "transformers", "safetensors", "huggingface_hub"):
        try:  # the installed version, without importing (the sections import what they use)
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    if check.device == "cuda":
        from dataclasses import asdict

        from linfuse.kernels.hardware import active_limits

        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                 "multiprocessors": props.multi_processor_count, "memory_gib": round(total / 2**30, 1),
                 "free_gib": round(free / 2**30, 1),
                 "shared_memory_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
                 "triton_target": asdict(active_limits()), "driver": _driver_version()}
    else:
        info["triton_target"] = "interpreter (configs: each kernel's first candidate)"
    return info


def _driver_version() -> str | None:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def scaled(problem, dry_run: bool):
    """The same kernel classes at small sizes: a few heads, ≤ 4096 tokens or a 48×48 grid (radius and text
    tokens kept, so the launchers choose as for the full problem); tiny for a dry run (the interpreter's pace)."""
    from dataclasses import replace

    if problem.op == "linear":
        return replace(problem, batch=1, heads=1 if dry_run else 2, tokens=32 if dry_run else min(problem.tokens, 4096))
    if dry_run:
        return replace(problem, batch=1, heads=1, grid=(4, 5), radius=min(problem.radius, 2),
                       num_global=min(problem.num_global, 3))
    return replace(problem, batch=1, heads=2, grid=(48, 48))


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def compare(problem, dtype: torch.dtype, device: str, backend: str) -> dict:
    """Output and q/k/v gradients of `backend` against the reference on the same (dtype-rounded) inputs, in fp32
    for half inputs and in fp64 for fp32 inputs."""
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = problem.tensors(dtype, device, requires_grad=True, generator=generator)
    grad_out = torch.randn(q.shape[:-1] + (problem.head_dim,), device=device, dtype=dtype, generator=generator)
    out = problem.run(q, k, v, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    ref_inputs = [t.detach().to(wide).requires_grad_(True) for t in (q, k, v)]
    ref = problem.run(*ref_inputs, backend="reference")
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.to(wide))
    errors = {"out": relative_rms(out, ref)} | {
        f"d{name}": relative_rms(g, r) for name, g, r in zip("qkv", grads, ref_grads, strict=True)}
    return {"errors": errors, "worst": max(errors.values()), "tolerance": TOLERANCE[dtype],
            "ok": max(errors.values()) <= TOLERANCE[dtype] and all(math.isfinite(e) for e in errors.values())}


def configs(check: Check, budget: gpu_budget.Budget) -> dict:
    """Every model problem through the Triton kernels against the reference, for the first and (on a GPU) the
    second fitting config of each kernel. Under the interpreter the launchers take each kernel's first candidate,
    so a dry run has rank 0 only, in fp32."""
    from linfuse.kernels import autoconfig
    from linfuse.kernels.model_shapes import MODEL_PROBLEMS

    dtypes = (torch.float32,) if check.dry_run else (torch.float16, torch.bfloat16)
    rows, last = budget.rows(), 0.0
    try:
        for rank in (0,) if check.dry_run else (0, 1):
            for dtype in dtypes:
                for full in MODEL_PROBLEMS:
                    if not budget.allows(f"{full.name} {dtype} rank {rank}", last):
                        continue
                    autoconfig.clear_choices()
                    autoconfig.use_alternative(rank)
                    problem = scaled(full, check.dry_run)
                    row = {"problem": full.name, "dtype": str(dtype), "rank": rank, "shape": _shape(problem)}
                    began = time.perf_counter()
                    with gpu_budget.launches() as launched:
                        row |= compare(problem, dtype, check.device, "triton")
                    last = time.perf_counter() - began
                    rows.append(row | {"configs": launched, "seconds": round(last, 2)})
    finally:
        autoconfig.use_alternative(0)
        autoconfig.clear_choices()
    return {"all_ok": all(r["ok"] for r in rows), "checked": len(rows)}


def _shape(problem) -> str:
    size = f"N={problem.tokens}" if problem.op == "linear" else (
        f"grid {problem.grid[0]}x{problem.grid[1]} r={problem.radius} text={problem.num_global}")
    return f"{problem.op} B={problem.batch} H={problem.heads} d={problem.head_dim} {size}"


def linear_bandwidth(check: Check, budget: gpu_budget.Budget) -> dict:
    import kernel_speed as kernel_bench

    from linfuse.kernels import linear_attention

    exponents = (5, 6) if check.dry_run else range(14, 21)
    heads = 2 if check.dry_run else 16  # B·H; the interpreter runs each program in Python
    dtypes = (torch.float32,) if check.dry_run else (torch.float16, torch.bfloat16)
    copy = None if check.dry_run else kernel_bench.copy_bandwidth_gbs()
    rows, previous = budget.rows(), None
    for dtype in dtypes:
        for d in (40, 64):
            for exponent in exponents:
                n = 1 << exponent
                # do_bench: about 0.15 s of calls, or 25 calls at least; the first call of a class compiles
                predicted = 0.0 if previous is None else gpu_budget.grown(previous, n, 1, calls=1)
                if not budget.allows(f"{dtype} d={d} N=2^{exponent}", predicted):
                    continue
                q, k, v = (torch.randn(1, n, heads, d, device=check.device, dtype=dtype) for _ in range(3))
                began = time.perf_counter()
                with gpu_budget.launches() as launched:
                    ms = check.time_ms(lambda q=q, k=k, v=v: linear_attention(q, k, v, backend="triton"))
                previous = (n, time.perf_counter() - began)
                gbs = 4 * n * heads * d * q.element_size() / ms / 1e6
                rows.append({"dtype": str(dtype), "d": d, "N": n, "ms": ms, "GB/s": gbs,
                             "of_copy": gbs / copy if copy else None, "configs": launched})
                del q, k, v
    big = [r["of_copy"] for r in rows if r["N"] >= 1 << 16 and r["of_copy"] is not None]
    return {"copy_GB/s": copy, "worst_of_copy_at_2^16_up": min(big) if big else None,
            "target": "forward >= 0.8 of copy bandwidth at N >= 2^16"}


def local_flux4k(check: Check, budget: gpu_budget.Budget) -> dict:
    """Triton first (the figure that matters), then dense SDPA, then FlexAttention; each row stands alone (one
    failing records its error in its row), and each output is compared with Triton's."""
    import kernel_speed as kernel_bench

    from linfuse.kernels import local_attention
    from linfuse.kernels.local_attention_reference import count_visible_pairs

    grid, radius, heads, d, text = ((12, 12), 4, 2, 32, 32) if check.dry_run else ((256, 256), 40, 24, 128, 512)
    dtype = torch.float32 if check.dry_run else torch.bfloat16
    block = 32 if check.dry_run else 128
    n = text + grid[0] * grid[1]
    pairs = count_visible_pairs(grid, radius, "circle", text)
    window_flops = 4 * d * heads * pairs
    g = torch.Generator(check.device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, device=check.device, dtype=dtype, generator=g) for _ in range(3))
    options = dict(grid=grid, radius=radius, num_global=text, layout="bhnd", backend="triton")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = budget.rows()
    result = {"problem": f"grid {grid[0]}x{grid[1]} + {text} text, H={heads}, d={d}, r={radius}, {dtype}",
              "keys_per_query": pairs / n, "target": "Triton >= 1.5x FlexAttention (compiled, same mask)"}
    reference = None  # Triton's output, the one the others are compared with
    flex_kind = "eager: the CPU" if check.dry_run else "compiled"
    cases = [("linfuse triton", "triton", lambda: lambda: local_attention(q, k, v, **options), window_flops, 0.0),
             ("dense SDPA (all pairs)", "sdpa", lambda: lambda: sdpa(q, k, v), 4 * d * heads * n * n, 0.0),
             (f"FlexAttention ({flex_kind}, BlockMask from tile visibility)", "flex",
              lambda: kernel_bench.flex_attention_fn(q, k, v, grid, radius, text, compiled=not check.dry_run,
                                                     block=block),
              window_flops, FLEX_FIRST_CALL_S[check.device])]
    last = 0.0
    for name, family, make, flops, first_call in cases:
        if not budget.allows(name, max(last, first_call)):
            continue
        row = {"kernel": name, "family": family}
        began = time.perf_counter()
        try:
            fn = make()
            out = fn()  # the first call also compiles (Flex on CUDA)
            if family == "triton":
                reference = out
            row["vs_triton"] = relative_rms(out, reference) if family == "flex" and reference is not None else None
            del out
            row["first_call_s"] = round(time.perf_counter() - began, 2)
            row["ms"] = check.time_ms(fn)
            row["TFLOP/s"] = flops / row["ms"] / 1e9
        except Exception as error:  # noqa: BLE001  (this kernel's row says why; the others stand)
            row["error"] = f"{type(error).__name__}: {error}"[:2000]
        last = time.perf_counter() - began
        rows.append(row)
    timed = {row["family"]: row["ms"] for row in rows if "ms" in row}
    if "flex" in timed and "triton" in timed:
        result["speedup_vs_flex"] = timed["flex"] / timed["triton"]
    if "sdpa" in timed and "triton" in timed:
        result["speedup_vs_sdpa"] = timed["sdpa"] / timed["triton"]
    return result


SECTIONS = {"environment": environment, "configs": configs, "linear_bandwidth": linear_bandwidth,
            "unet_sd15": gpu_models.unet_sd15, "local_flux4k": local_flux4k,
            "compiled_unet": gpu_models.compiled_unet, "lean_16k": gpu_models.lean_16k,
            "flux_clear": gpu_models.flux_clear}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU, the kernels through Triton's interpreter")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run, imports included "
                        "(each section gets its share of what is left and skips the cases that would not fit)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of the sections")
    args = parser.parse_args(argv)
    names = args.sections.split(",")
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds; got {args.budget}")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        if any(name.startswith("linfuse.kernels.") and name.endswith("_triton") for name in sys.modules):
            parser.error("--dry-run runs the kernels through Triton's interpreter: set TRITON_INTERPRET=1 before "
                         "the kernels are imported (TRITON_INTERPRET=1 python bench/gpu_check.py --dry-run ...)")
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, on their first use below
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a machine without a GPU")
    check = Check(args.out, args.dry_run, args.budget)
    order = [name for name in SECTIONS if name in names]
    with gpu_budget.backends("triton"):  # the model sections measure the kernels: a silent fallback would lie
        for index, name in enumerate(order):
            print(f"[{check.elapsed():6.0f} s] {name}", flush=True)
            check.run(name, SECTIONS[name], order[index:])
    print(gpu_report.markdown(check.results))
    configs_ok = check.results["sections"].get("configs", {}).get("all_ok", True)
    errors = [name for name, s in check.results["sections"].items() if "error" in s]
    return 0 if configs_ok and not errors else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is written: skip the interpreter's teardown of torch's modules (seconds under load)
