"""Progressive high-resolution generation: time and peak memory per size, linear vs softmax, and the preflight.

    python bench/highres.py [--sizes 256 512 1024 2048] [--lean-sizes 1024 2048] [--steps 20] [--json out.json]

CPU part (always): for each size a child process loads the bundled student (linear attention) and, up to
``--softmax-max`` pixels a side, the bundled teacher (softmax), estimates the job with the memory preflight, then
generates one square image through ``generate_highres`` (latent upscaling, default schedule). Peak memory is VmHWM
minus VmRSS just before the call (what the job added to the loaded process), compared with the preflight's
estimate as measured / estimated. Ratios softmax / linear come from the same run. The last line is the log–log
slope of the linear model's peak memory against the pixel count (1 = linear growth).

Lean part (``--lean-sizes``, default 1024 2048): the bundled student's job at each size with the UNet plain and
lean (``HighResOptions.memory``), each in a fresh process: time, measured peak, the preflight's estimate, the
ratios lean / plain, and the mean |Δ| of the two 8-bit pictures. Planner part: ``linfuse estimate``'s figures for
16384² with SD-1.5 and SDXL (fp16, CUDA, guidance 7.5, LinFusion), plain and lean, against 24 GiB and 16 GiB cards
(host memory taken as 64 GiB).

GPU part (only with CUDA): the full-size SD-1.5 UNet from its published config with random weights, fp16, one
forward at batch 2 (classifier-free guidance) per latent size, LinFusion vs SDPA: time (median of 3, after a
warm-up) and ``torch.cuda.max_memory_allocated``.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procstat import memory_kib, reset_peak  # bench/procstat.py (scripts run as bench/NAME.py)

ROOT = Path(__file__).resolve().parent.parent


def child(kind: str, size: int, steps: int, memory: str = "plain", image_path: str | None = None) -> dict:
    """Run in a fresh process: one progressive generation at size×size with the UNet in ``memory`` mode; time,
    measured and estimated peak (and the image saved to ``image_path``)."""
    from linfuse.pipelines import GenerationParams, load_pipeline
    from linfuse.pipelines.highres import HighResOptions, generate_highres, plan_job, preflight_job

    pipe = load_pipeline(None if kind == "linear" else "teacher", method="linfusion" if kind == "linear" else None,
                         device="cpu")
    params = GenerationParams(prompt="red apple on a blue background", width=size, height=size, steps=steps,
                              guidance=5.0, seed=0)
    options = HighResOptions(max_softmax_pixels=max(size * size, 4096), memory=memory)
    estimate = preflight_job(pipe, params, options, plan_job(pipe, params, options))
    before = reset_peak()
    started = time.perf_counter()
    image = generate_highres(pipe, params, options, progress=False)
    seconds = time.perf_counter() - started
    measured = (memory_kib("VmHWM") - before) * 1024
    if image_path:
        image.save(image_path)
    return {"kind": kind, "size": size, "memory": memory, "seconds": seconds, "measured_bytes": measured,
            "estimated_bytes": estimate.peak_device, "modes": estimate.modes}


def run_child(kind: str, size: int, steps: int, memory: str = "plain", image_path: str | None = None) -> dict:
    extra = ["--memory", memory] + (["--image", image_path] if image_path else [])
    result = subprocess.run([sys.executable, __file__, "--child", kind, str(size), "--steps", str(steps), *extra],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{kind} at {size} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def slope(rows: list[dict]) -> float:
    """Least-squares slope of log(peak bytes) against log(pixels)."""
    xs = [math.log(r["size"] ** 2) for r in rows]
    ys = [math.log(r["measured_bytes"]) for r in rows]
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def cpu_table(args) -> list[dict]:
    rows = []
    print("| size | linear s | linear peak MiB | estimate MiB | measured / estimate | softmax s | softmax peak MiB | "
          "time softmax/linear | memory softmax/linear |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        linear = run_child("linear", size, args.steps)
        dense = run_child("softmax", size, args.steps) if size <= args.softmax_max else None
        rows += [linear] + ([dense] if dense else [])
        mib = 2**20
        ratio = linear["measured_bytes"] / linear["estimated_bytes"]
        cells = [f"{size}²", f"{linear['seconds']:.1f}", f"{linear['measured_bytes'] / mib:.0f}",
                 f"{linear['estimated_bytes'] / mib:.0f}", f"{ratio:.2f}"]
        if dense:
            cells += [f"{dense['seconds']:.1f}", f"{dense['measured_bytes'] / mib:.0f}",
                      f"{dense['seconds'] / linear['seconds']:.2f}",
                      f"{dense['measured_bytes'] / linear['measured_bytes']:.2f}"]
        else:
            cells += ["—"] * 4
        print("| " + " | ".join(cells) + " |", flush=True)
    linear_rows = [r for r in rows if r["kind"] == "linear"]
    if len(linear_rows) > 1:
        print(f"\nlog–log slope of the linear model's peak memory against pixels: {slope(linear_rows):.2f}")
    return rows


def lean_table(args) -> list[dict]:
    import numpy as np
    from PIL import Image

    rows = []
    print("\n| size | plain s | lean s | time lean/plain | plain peak MiB | lean peak MiB | memory lean/plain | "
          "plain est. MiB | lean est. MiB | lean measured/est. | mean abs diff (8-bit) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.lean_sizes:
            plain, lean = (run_child("linear", size, args.steps, mode, f"{folder}/{mode}.png")
                           for mode in ("plain", "lean"))
            images = [np.asarray(Image.open(f"{folder}/{mode}.png"), dtype=np.float64) for mode in ("plain", "lean")]
            difference = float(np.abs(images[0] - images[1]).mean())
            mib = 2**20
            print(f"| {size}² | {plain['seconds']:.1f} | {lean['seconds']:.1f} | "
                  f"{lean['seconds'] / plain['seconds']:.2f} | {plain['measured_bytes'] / mib:.0f} | "
                  f"{lean['measured_bytes'] / mib:.0f} | {lean['measured_bytes'] / plain['measured_bytes']:.2f} | "
                  f"{plain['estimated_bytes'] / mib:.0f} | {lean['estimated_bytes'] / mib:.0f} | "
                  f"{lean['measured_bytes'] / lean['estimated_bytes']:.2f} | {difference:.4f} |", flush=True)
            rows.append({"size": size, "plain": plain, "lean": lean, "mean_abs_difference": difference})
    return rows


def planner_table() -> list[dict]:
    from linfuse.pipelines.planner import estimate_job

    gib = 2**30
    rows = []
    print("\n16384², fp16 on CUDA, guidance 7.5, LinFusion, host memory 64 GiB (`linfuse estimate`):\n")
    print("| model | mode | UNet stage GiB | weights GiB | peak device GiB | peak host GiB | largest tensor | "
          "fits 24 GiB | fits 16 GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for model in ("sd15", "sdxl"):
        for mode in ("plain", "lean"):
            plans = {card: estimate_job(model, 16384, 16384, memory=card * gib, host_memory=64 * gib,
                                        memory_mode=mode) for card in (24, 16)}
            plan = plans[24]
            stage = max(s.device_bytes for s in plan.estimate.stages if s.denoising)
            elements = plan.estimate.max_elements
            print(f"| {model} | {plan.mode} | {stage / gib:.2f} | {plan.weights_bytes / gib:.2f} | "
                  f"{plan.peak_device_bytes / gib:.2f} | {plan.peak_host_bytes / gib:.2f} | {elements:.3g}"
                  f"{' (≥ 2^31)' if elements >= 2**31 else ''} | {'yes' if plan.fits else 'no'} | "
                  f"{'yes' if plans[16].fits else 'no, largest ' + 'x'.join(map(str, plans[16].largest_fitting or ()))}"
                  " |", flush=True)
            rows.append(plan.to_json())
    return rows


def gpu_table(latent_sides: list[int]) -> list[dict]:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from linfuse.linearize import linearize, unlinearize

    config = json.loads((ROOT / "tests" / "fixtures" / "configs" / "sd15_unet.json").read_text())
    unet = UNet2DConditionModel.from_config(config).to("cuda", torch.float16).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    context = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    rows = []
    print("\n| latent | pixels | SDPA ms | linear ms | SDPA GiB | linear GiB | time SDPA/linear |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for side in latent_sides:
        sample = torch.randn(2, 4, side, side, device="cuda", dtype=torch.float16)
        figures = {}
        for kind in ("sdpa", "linear"):
            if kind == "linear":
                linearize(unet)
            figures[kind] = time_forward(unet, sample, context)
            if kind == "linear":
                unlinearize(unet)
        sdpa, linear = figures["sdpa"], figures["linear"]
        print(f"| {side}² | {side * 8}² | {sdpa[0]:.0f} | {linear[0]:.0f} | {sdpa[1]:.2f} | {linear[1]:.2f} | "
              f"{sdpa[0] / linear[0]:.2f} |", flush=True)
        rows.append({"latent": side, "sdpa": sdpa, "linear": linear})
    return rows


def time_forward(unet, sample, context) -> tuple[float, float]:
    """(median ms of 3 forwards after one warm-up, peak GiB), or (nan, nan) when it runs out of memory."""
    import torch

    try:
        with torch.no_grad():
            unet(sample, 500, context)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(3):
                started = time.perf_counter()
                unet(sample, 500, context)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan"), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--softmax-max", type=int, default=1024, help="largest side the softmax teacher runs at")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latents", type=int, nargs="+", default=[64, 128, 256, 512], help="GPU part: latent sides")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--lean-sizes", type=int, nargs="*", default=[1024, 2048],
                        help="sizes of the plain-vs-lean table (bundled student)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.steps, args.memory, args.image)))
        return
    rows = {"cpu": cpu_table(args) if args.sizes else []}
    if args.lean_sizes:
        rows["lean"] = lean_table(args)
    rows["planner"] = planner_table()
    import torch

    if torch.cuda.is_available():
        rows["gpu"] = gpu_table(args.latents)
    else:
        print("\nno CUDA device: GPU part skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
