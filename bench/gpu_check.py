"""One-shot GPU validation and benchmark of linfuse's kernels; writes results.json and results.md to --out.

    python bench/gpu_check.py --out runs/gpu [--budget 470]    # on one CUDA GPU, about 8 minutes at most
    python bench/gpu_check.py --out runs/gpu-dry --dry-run     # the same code at tiny sizes on the CPU

Sections, each timed against the budget and written out as soon as it ends (a run cut short keeps what it did):
1. environment: GPU, driver, CUDA, torch, Triton, diffusers, shared memory per block, multiprocessors;
2. configs: every model problem (linear_attention / local_attention, scaled to small token counts), fp16 and bf16,
   forward and gradients against the fp32 PyTorch reference, for the first and the second config that fits each
   kernel (the configs autotuning may pick), with the configs listed;
3. linear bandwidth: B·H = 16, d = 40 and 64, N = 2^14 … 2^20, fp16 and bf16; GB/s of the minimal traffic
   (read q, k, v, write o: 8·N·d bytes per head) against a device-to-device copy measured in the same run;
4. local attention FLUX-4K: 256×256 image tokens + 512 text tokens, 24 heads, d = 128, circle r = 40, bf16;
   effective TFLOP/s (4·d·heads·visible pairs / time) of the Triton kernel, FlexAttention (compiled, same mask)
   and dense SDPA (all pairs, its own FLOPs);
5. SD-1.5 UNet (full width, random weights, fp16, batch 1): forward time with linfusion vs diffusers' SDPA at latents
   128², 256², 512², 1024²;
6. a 16384² SD-1.5 lean job (full width, random weights, fp16, LinFusion): the largest UNet call of the 16K stage,
   batch 2 (guidance), in the lean memory mode with skips parked in host memory: time, finiteness, and
   torch.cuda.max_memory_allocated against the preflight's trace of the same call (and of the plain forward);
7. the FLUX.1-dev transformer (its config, random weights, bf16): forward time with SDPA vs CLEAR r = 16 at images
   of 1024², 2048² and 4096² (4,096 to 65,536 image tokens, plus 512 text tokens).
--dry-run runs sections 2–7 on the CPU with the reference path at tiny sizes (what the test suite runs).
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import full_width  # noqa: E402  (bench/ helpers: the full-width UNet builder)
import kernels as kernel_bench  # noqa: E402  (timers, copy bandwidth, FlexAttention with CLEAR's mask)

from linfuse.kernels import autoconfig  # noqa: E402
from linfuse.kernels.local_attention_reference import count_visible_pairs  # noqa: E402
from linfuse.kernels.model_shapes import MODEL_PROBLEMS, AttentionProblem  # noqa: E402

TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}  # RMS error / RMS of the reference
SECTION_SHARE = {"configs": 0.30, "linear_bandwidth": 0.08, "local_flux4k": 0.12, "unet_sd15": 0.20, "lean_16k": 0.15,
                 "flux_clear": 0.15}


class Check:
    """Shared state of one run: device, sizes, budget, and the results written after each section."""

    def __init__(self, out: Path, dry_run: bool, budget_s: float):
        self.out, self.dry_run, self.budget_s = out, dry_run, budget_s
        self.device = "cpu" if dry_run else "cuda"
        self.start = time.perf_counter()
        self.results: dict = {"dry_run": dry_run, "budget_s": budget_s, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_ms(self, fn) -> float:
        return kernel_bench.cpu_time_ms(fn, 2) if self.dry_run else kernel_bench.gpu_time_ms(fn)

    def run(self, name: str, section) -> None:
        share = SECTION_SHARE.get(name, 0.0)
        deadline = self.elapsed() + share * self.budget_s if share else math.inf
        began = time.perf_counter()
        try:
            result = section(self, deadline)
        except Exception:  # a failing section is reported, and the others still run
            result = {"error": traceback.format_exc(limit=8)}
        result["seconds"] = round(time.perf_counter() - began, 1)
        self.results["sections"][name] = result
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.json", json.dumps(self.results, indent=1, default=str)),
                           ("results.md", markdown(self.results))):
            partial = self.out / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, self.out / name)


# ---------------------------------------------------------------------------------------------------------------
# Sections.


def environment(check: Check, deadline: float) -> dict:
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "device": check.device}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if check.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                 "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
                 "shared_memory_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
                 "driver": _driver_version()}
    return info


def _driver_version() -> str | None:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def scaled(problem: AttentionProblem, dry_run: bool) -> AttentionProblem:
    """The same kernel classes at small sizes: a few heads, ≤ 4096 tokens or a 48×48 grid (radius and text
    tokens kept, so the launchers choose as for the full problem); tiny for a dry run."""
    from dataclasses import replace

    if problem.op == "linear":
        return replace(problem, batch=1, heads=2, tokens=96 if dry_run else min(problem.tokens, 4096))
    if dry_run:
        return replace(problem, batch=1, heads=2, grid=(6, 7), radius=min(problem.radius, 3),
                       num_global=min(problem.num_global, 5))
    return replace(problem, batch=1, heads=2, grid=(48, 48))


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def compare(problem: AttentionProblem, dtype: torch.dtype, device: str, backend: str) -> dict:
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


def configs(check: Check, deadline: float) -> dict:
    backend = "reference" if check.dry_run else "triton"
    dtypes = (torch.float32,) if check.dry_run else (torch.float16, torch.bfloat16)
    rows, skipped = [], []
    for rank in (0, 1):  # the first fitting config of every kernel, then the second (what autotuning may pick)
        for dtype in dtypes:
            for full in MODEL_PROBLEMS:
                if check.elapsed() > deadline:
                    skipped.append(f"{full.name} {dtype} rank {rank}")
                    continue
                autoconfig.clear_choices()
                autoconfig.use_alternative(rank)
                problem = scaled(full, check.dry_run)
                row = {"problem": full.name, "dtype": str(dtype), "rank": rank, "shape": _shape(problem)}
                row |= compare(problem, dtype, check.device, backend)
                row["configs"] = autoconfig.chosen()
                rows.append(row)
    autoconfig.use_alternative(0)
    autoconfig.clear_choices()
    return {"rows": rows, "all_ok": all(r["ok"] for r in rows), "skipped": skipped}


def _shape(problem: AttentionProblem) -> str:
    size = f"N={problem.tokens}" if problem.op == "linear" else (
        f"grid {problem.grid[0]}x{problem.grid[1]} r={problem.radius} text={problem.num_global}")
    return f"{problem.op} B={problem.batch} H={problem.heads} d={problem.head_dim} {size}"


def linear_bandwidth(check: Check, deadline: float) -> dict:
    from linfuse.kernels import linear_attention

    exponents = (8, 10) if check.dry_run else range(14, 21)
    dtypes = (torch.float32,) if check.dry_run else (torch.float16, torch.bfloat16)
    backend = "reference" if check.dry_run else "triton"
    copy = None if check.dry_run else kernel_bench.copy_bandwidth_gbs()
    rows, skipped = [], []
    for dtype in dtypes:
        for d in (40, 64):
            for exponent in exponents:
                if check.elapsed() > deadline:
                    skipped.append(f"{dtype} d={d} N=2^{exponent}")
                    continue
                n = 1 << exponent
                q, k, v = (torch.randn(1, n, 16, d, device=check.device, dtype=dtype) for _ in range(3))
                ms = check.time_ms(lambda q=q, k=k, v=v: linear_attention(q, k, v, backend=backend))
                gbs = 4 * n * 16 * d * q.element_size() / ms / 1e6
                rows.append({"dtype": str(dtype), "d": d, "N": n, "ms": ms, "GB/s": gbs,
                             "of_copy": gbs / copy if copy else None})
    return {"copy_GB/s": copy, "rows": rows, "skipped": skipped,
            "target": "forward >= 0.8 of copy bandwidth at N >= 2^16"}


def local_flux4k(check: Check, deadline: float) -> dict:
    from linfuse.kernels import local_attention

    grid, radius, heads, d, text = ((12, 12), 4, 2, 32, 8) if check.dry_run else ((256, 256), 40, 24, 128, 512)
    dtype = torch.float32 if check.dry_run else torch.bfloat16
    n = text + grid[0] * grid[1]
    pairs = count_visible_pairs(grid, radius, "circle", text)
    window_flops = 4 * d * heads * pairs
    q, k, v = (torch.randn(1, heads, n, d, device=check.device, dtype=dtype) for _ in range(3))
    options = dict(grid=grid, radius=radius, num_global=text, layout="bhnd")
    rows = {}
    backend = "reference" if check.dry_run else "triton"
    rows["linfuse " + backend] = (check.time_ms(lambda: local_attention(q, k, v, backend=backend, **options)),
                                  window_flops)
    if not check.dry_run and check.elapsed() < deadline:
        rows["FlexAttention (compiled)"] = (check.time_ms(kernel_bench.flex_attention_fn(q, k, v, grid, radius, text)),
                                            window_flops)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows["dense SDPA (all pairs)"] = (check.time_ms(lambda: sdpa(q, k, v)), 4 * d * heads * n * n)
    table = [{"kernel": name, "ms": ms, "TFLOP/s": flops / ms / 1e9} for name, (ms, flops) in rows.items()]
    result = {"problem": f"grid {grid[0]}x{grid[1]} + {text} text, H={heads}, d={d}, r={radius}, {dtype}",
              "keys_per_query": pairs / n, "rows": table, "target": "Triton >= 1.5x FlexAttention"}
    if "FlexAttention (compiled)" in rows:
        result["speedup_vs_flex"] = rows["FlexAttention (compiled)"][0] / rows["linfuse triton"][0]
    return result


def unet_sd15(check: Check, deadline: float) -> dict:
    import linfuse

    latents = (8, 16) if check.dry_run else (128, 256, 512, 1024)
    dtype = torch.float32 if check.dry_run else torch.float16
    small = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1}
    rows, skipped = [], []
    for method in ("sdpa", "linfusion"):
        unet = full_width.build("sd15", **(small if check.dry_run else {}))
        if method == "linfusion":
            linfuse.linearize(unet)
        _time_unet(check, unet.to(check.device, dtype), method, latents, deadline, rows, skipped)
        if check.device == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "speedup_vs_sdpa": speedups_over_sdpa(rows, "linfusion", "latent"), "skipped": skipped,
            "target": "linfusion >= 1.5x SDPA at a 256² latent"}


def speedups_over_sdpa(rows: list[dict], method: str, size_key: str) -> dict:
    """{size: SDPA ms / ``method`` ms} for every size both were timed at."""
    sdpa = {row[size_key]: row["ms"] for row in rows if row["method"] == "sdpa"}
    return {str(row[size_key]): sdpa[row[size_key]] / row["ms"] for row in rows
            if row["method"] == method and row[size_key] in sdpa}


def _time_unet(check: Check, unet, method: str, latents, deadline: float, rows: list, skipped: list) -> None:
    dtype = next(unet.parameters()).dtype
    for latent in latents:
        if check.elapsed() > deadline:
            skipped.append(f"{method} latent {latent}")
            continue
        inputs = {key: value.to(check.device, dtype) if value.is_floating_point() else value.to(check.device)
                  for key, value in full_width.inputs(unet, latent).items()}
        with torch.no_grad():
            ms = _forward_ms(check, lambda inputs=inputs: unet(**inputs).sample)
        rows.append({"method": method, "latent": latent, "image_px": 8 * latent, "ms": ms})


def _forward_ms(check: Check, fn) -> float:
    """One warm-up forward, then the median of up to three (one when a forward takes over ten seconds)."""
    if check.dry_run:
        return kernel_bench.cpu_time_ms(fn, 1)
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - began))
        if len(times) >= 2 and times[-1] > 10_000:
            break
    measured = times[1:] or times
    return sorted(measured)[len(measured) // 2]


def flux_clear(check: Check, deadline: float) -> dict:
    """The FLUX.1-dev transformer (its config, random weights, bf16, batch 1, 512 text tokens): one forward with
    diffusers' SDPA attention, then converted to CLEAR (radius 16), at image sizes 1024² … 4096²."""
    from diffusers import FluxTransformer2DModel

    import linfuse

    config = json.loads((Path(linfuse.__file__).parent / "pipelines" / "configs" / "flux.json").read_text())
    config = {k: v for k, v in config["transformer"].items() if not k.startswith("_")}
    if check.dry_run:
        config.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])
    sides, text, dtype = ((128, 256), 8, torch.float32) if check.dry_run else ((1024, 2048, 4096), 512, torch.bfloat16)
    with torch.device(check.device):
        transformer = FluxTransformer2DModel.from_config(config).to(dtype).eval()
    generator = torch.Generator(check.device).manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    rows, skipped = [], []
    for method in ("sdpa", "clear"):
        if method == "clear":
            linfuse.linearize(transformer, "clear", radius=16)
        for side in sides:
            if check.elapsed() > deadline:
                skipped.append(f"{method} {side}²")
                continue
            inputs = _flux_inputs(transformer, side, text, check.device, dtype)
            with torch.no_grad():
                ms = _forward_ms(check, lambda inputs=inputs: transformer(**inputs).sample)
            rows.append({"method": method, "image_px": side, "tokens": (side // 16) ** 2, "ms": ms})
    return {"rows": rows, "speedup_vs_sdpa": speedups_over_sdpa(rows, "clear", "image_px"), "skipped": skipped,
            "target": "CLEAR r=16 faster than SDPA at 2048², and the gap growing with the size (CLEAR: 6.3x at 8K)"}


def _flux_inputs(transformer, side: int, text: int, device: str, dtype) -> dict:
    from diffusers import FluxPipeline

    config, rows = transformer.config, side // 16
    g = torch.Generator(device).manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, rows * rows, config.in_channels, generator=g, device=device),
              "encoder_hidden_states": torch.randn(1, text, config.joint_attention_dim, generator=g, device=device),
              "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=g, device=device),
              "timestep": torch.tensor([0.5], device=device),
              "img_ids": FluxPipeline._prepare_latent_image_ids(1, rows, rows, device, dtype),
              "txt_ids": torch.zeros(text, 3, device=device)}
    if config.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5], device=device)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def lean_16k(check: Check, deadline: float) -> dict:
    import linfuse
    from linfuse.linearize.twin import meta_twin
    from linfuse.pipelines.lean import LeanSettings, lean_mode
    from linfuse.pipelines.memory_trace import trace
    from linfuse.pipelines.preflight import ALLOCATOR_OVERHEAD

    small = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1}
    latent, dtype = (32, torch.float32) if check.dry_run else (2048, torch.float16)
    unet = full_width.build("sd15", **(small if check.dry_run else {}))
    linfuse.linearize(unet)
    unet = unet.to(check.device, dtype).eval()
    settings = LeanSettings(park_skips=not check.dry_run)
    one = {k: v.to(check.device, dtype) if v.is_floating_point() else v.to(check.device)
           for k, v in full_width.inputs(unet, latent).items()}
    inputs = {k: torch.cat([v, v]) if k != "timestep" else v for k, v in one.items()}  # batch 2: guidance
    estimates = {}
    twin = meta_twin(unet)
    for name, mode in (("lean", settings), ("plain", None)):
        meta = {k: torch.empty_like(v, device="meta") if v.is_floating_point() else v for k, v in inputs.items()}
        with lean_mode(twin, mode):
            traced = trace(lambda m: twin(**m).sample, meta, existing=[*twin.parameters(), *twin.buffers()])
        estimates[name] = {"device_bytes": int(ALLOCATOR_OVERHEAD["cuda"] * traced.peak),
                           "host_bytes": traced.host_peak, "max_elements": traced.max_elements}
    if check.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if check.device == "cuda" else 0
    began = time.perf_counter()
    with torch.no_grad(), lean_mode(unet, settings):
        out = unet(**inputs).sample
    if check.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    measured = torch.cuda.max_memory_allocated() - before if check.device == "cuda" else None
    estimated = estimates["lean"]["device_bytes"]
    return {"latent": latent, "image_px": 8 * latent, "dtype": str(dtype), "mode": settings.describe(),
            "seconds": seconds, "finite": bool(torch.isfinite(out).all()), "measured_peak_bytes": measured,
            "estimates": estimates, "measured_over_estimate": None if measured is None else measured / estimated,
            "target": "measured within ±25 % of the estimate; plain's trace above 2^31 elements, lean's below"}


SECTIONS = {"environment": environment, "configs": configs, "linear_bandwidth": linear_bandwidth,
            "local_flux4k": local_flux4k, "unet_sd15": unet_sd15, "lean_16k": lean_16k, "flux_clear": flux_clear}


# ---------------------------------------------------------------------------------------------------------------
# Report.


def markdown(results: dict) -> str:
    sections = results["sections"]
    lines = [f"# linfuse GPU check{' (dry run on the CPU)' if results['dry_run'] else ''}", ""]
    if "environment" in sections:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sections["environment"].items()] + [""]
    if "configs" in sections and "rows" in sections["configs"]:
        lines += ["## Kernels against the fp32 reference (relative RMS error, worst of out, dq, dk, dv)", "",
                  "| problem | shape | dtype | config rank | worst error | tolerance | ok |",
                  "|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['problem']} | {r['shape']} | {r['dtype']} | {r['rank']} | {r['worst']:.2e} | "
                  f"{r['tolerance']:.0e} | {'yes' if r['ok'] else '**no**'} |" for r in sections["configs"]["rows"]]
        lines.append("")
    if "linear_bandwidth" in sections and "rows" in sections["linear_bandwidth"]:
        bw = sections["linear_bandwidth"]
        lines += [f"## Linear attention forward, B·H = 16 (copy: {_num(bw['copy_GB/s'])} GB/s)", "",
                  "| dtype | d | N | ms | GB/s | of copy |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['dtype']} | {r['d']} | {r['N']} | {r['ms']:.3f} | {r['GB/s']:.0f} | {_num(r['of_copy'])} |"
                  for r in bw["rows"]]
        lines.append("")
    if "local_flux4k" in sections and "rows" in sections["local_flux4k"]:
        local = sections["local_flux4k"]
        lines += [f"## Local attention: {local['problem']}", "", "| kernel | ms | effective TFLOP/s |",
                  "|---|---:|---:|"]
        lines += [f"| {r['kernel']} | {r['ms']:.2f} | {r['TFLOP/s']:.1f} |" for r in local["rows"]]
        lines += ["", f"Triton vs FlexAttention: {_num(local.get('speedup_vs_flex'))}×", ""]
    if "unet_sd15" in sections and "rows" in sections["unet_sd15"]:
        unet = sections["unet_sd15"]
        lines += ["## SD-1.5 UNet forward (random weights, batch 1)", "", "| method | latent | image | ms |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['latent']}² | {r['image_px']}² | {r['ms']:.1f} |" for r in unet["rows"]]
        lines += ["", "linfusion speed-up over SDPA: " + ", ".join(
            f"{k}²: {v:.2f}×" for k, v in unet["speedup_vs_sdpa"].items()), ""]
    if "lean_16k" in sections and "seconds" in sections["lean_16k"]:
        lean = sections["lean_16k"]
        est = lean["estimates"]
        lines += [f"## {lean['image_px']}² SD-1.5 UNet call in the lean mode ({lean['mode']}, batch 2, "
                  f"{lean['dtype']})", "", "| | seconds | device GiB | host GiB | largest tensor |",
                  "|---|---:|---:|---:|---:|",
                  f"| measured | {lean['seconds']:.1f} | {_gib(lean['measured_peak_bytes'])} | | |"]
        lines += [f"| estimate, {name} | | {_gib(e['device_bytes'])} | {_gib(e['host_bytes'])} | "
                  f"{e['max_elements']:.3g} |" for name, e in est.items()]
        lines += ["", f"finite: {lean['finite']}; measured / estimate: {_num(lean['measured_over_estimate'])}", ""]
    if "flux_clear" in sections and "rows" in sections["flux_clear"]:
        flux = sections["flux_clear"]
        lines += ["## FLUX.1-dev transformer forward (random weights, batch 1, 512 text tokens)", "",
                  "| method | image | image tokens | ms |", "|---|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['image_px']}² | {r['tokens']} | {r['ms']:.1f} |" for r in flux["rows"]]
        lines += ["", "CLEAR (r = 16) speed-up over SDPA: " + ", ".join(
            f"{k}²: {v:.2f}×" for k, v in flux["speedup_vs_sdpa"].items()), ""]
    for name, section in sections.items():
        for key in ("error", "skipped"):
            if section.get(key):
                lines += [f"**{name} {key}:**", "", "```", str(section[key]), "```", ""]
    return "\n".join(lines)


def _gib(count) -> str:
    return "-" if count is None else f"{count / 2**30:.2f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, reference path")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run (sections skip "
                        "their remaining cases when their share is spent)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of the sections")
    args = parser.parse_args(argv)
    names = args.sections.split(",")
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a machine without a GPU")
    check = Check(args.out, args.dry_run, args.budget)
    for name in names:
        print(f"[{check.elapsed():6.0f} s] {name}", flush=True)
        check.run(name, SECTIONS[name])
    print(markdown(check.results))
    configs_ok = check.results["sections"].get("configs", {}).get("all_ok", True)
    errors = [name for name, s in check.results["sections"].items() if "error" in s]
    return 0 if configs_ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
