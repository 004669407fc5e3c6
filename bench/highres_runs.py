"""Real high-resolution runs of the bundled student through ``linfuse generate``, checked against the planner.

    python bench/highres_runs.py [--sizes 4096 8192] [--steps 25] [--results bench/highres_runs.json] [--run-16k]

For each size a child process runs ``linfuse generate`` (CPU, fp32, 25 steps, guidance 5, memory mode auto, seed 0)
and this script reads its wall time and its peak resident memory (``ru_maxrss`` of the child, the whole process),
the rung auto took at each stage (the ``memory:`` line generate prints) and each stage's time (from its
``high-res stages`` progress bar). Beside it, ``linfuse estimate``'s plan of the same job (``estimate_job``: same
model, size, dtype, guidance and memory mode, the machine's total memory as the cap) gives the peak the run should
stay near: measured / planned within 0.75–1.25 is the target. Rows are written to ``--results`` as each run
ends, and a size already there is not run again (``--rerun`` runs it anyway), so a long series resumes.

The 16384² row prints the plan and a projected time: every stage the runs measured, taken from the largest run
that had it, and each stage above it scaled from the largest run's last stage by pixels × denoising steps (the
decode by pixels). Running it is opt-in (``--run-16k``): hours on 2 cores.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "red apple on a blue background"
BAR = re.compile(r"high-res stages:.*?(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")
GUIDANCE = 5.0


def generate(size: int, steps: int, folder: str) -> dict:
    """One ``linfuse generate`` run in a child process: seconds, peak RSS, rungs and stage times."""
    out = Path(folder) / f"student-{size}.png"
    command = [sys.executable, "-m", "linfuse", "generate", PROMPT, "--size", f"{size}x{size}", "--steps",
               str(steps), "--guidance", str(GUIDANCE), "--seed", "0", "--device", "cpu", "--memory-mode", "auto",
               "--out", str(out)]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0 or not out.is_file():
        raise RuntimeError(f"linfuse generate at {size}² failed:\n{text[-3000:]}")
    return {"size": size, "steps": steps, "seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "rungs": rungs_of(text), "stage_seconds": stage_seconds(text)}


def rungs_of(log: str) -> list[str]:
    """The rung of each stage, from generate's ``memory: 64x64 plain; …`` line."""
    line = next((row for row in log.replace("\r", "\n").splitlines() if row.startswith("memory: ")), "")
    return [part.strip() for part in line[len("memory: "):].split(";") if part.strip()]


def stage_seconds(log: str) -> list[float]:
    """Seconds of each denoising stage: differences of the progress bar's elapsed time at each completed stage
    (1 s resolution)."""
    elapsed = {}
    for match in BAR.finditer(log.replace("\r", "\n")):
        done = int(match.group(1))
        hours, minutes, seconds = (int(match.group(i) or 0) for i in (3, 4, 5))
        elapsed[done] = 3600 * hours + 60 * minutes + seconds
    marks = [elapsed.get(k, 0) for k in range(max(elapsed, default=0) + 1)]
    return [float(b - a) for a, b in zip(marks, marks[1:], strict=False)]


def plan(size: int) -> dict:
    """``linfuse estimate``'s plan of the same job, with this machine's total memory as the cap."""
    import torch

    from linfuse.pipelines.planner import estimate_job
    from linfuse.pipelines.preflight import total_memory

    memory = total_memory(torch.device("cpu"))
    started = time.perf_counter()
    job = estimate_job("student", size, size, memory=memory, host_memory=memory, dtype="fp32", device="cpu",
                       guidance=GUIDANCE, find_largest=False)
    return {"planned_peak_bytes": job.peak_device_bytes, "fits": job.fits, "planned_rungs": job.estimate.modes,
            "plan_seconds": time.perf_counter() - started, "memory_bytes": memory,
            "stages": [(s["width"], s["mode"]) for s in job.to_json()["stages"]]}


def projected_seconds(rows: list[dict], size: int, steps: int) -> float:
    """A job of ``steps`` steps, timed from measured stages (see the module docstring): each stage's time scales
    with its denoising steps from the run's own step count to ``steps``."""
    from linfuse.pipelines.plan import denoising_steps, plan_stages

    largest = max(rows, key=lambda row: row["size"])
    ran = largest.get("steps", steps)
    measured = largest["stage_seconds"]
    ran_stages = plan_stages(largest["size"], largest["size"], 64)
    last = ran_stages[-1]
    per_pixel_step = measured[-1] / (last.width * last.height * denoising_steps(ran, last.strength))
    total = 0.0
    for index, stage in enumerate(plan_stages(size, size, 64)):
        if index < len(measured):  # the same latent size; its strength may differ in a longer job
            total += measured[index] * denoising_steps(steps, stage.strength) / \
                max(1, denoising_steps(ran, ran_stages[index].strength))
        else:
            total += per_pixel_step * stage.width * stage.height * denoising_steps(steps, stage.strength)
    rest = largest["seconds"] - sum(measured)  # loading, planning, decode and PNG: scaled with the pixels
    return total + rest * size * size / largest["size"] ** 2


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, rows: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(rows, indent=2))
    os.replace(temporary, path)


def print_table(rows: dict) -> None:
    gib = 2**30
    print("| size | steps | seconds | peak RSS GiB | planned GiB | measured / planned | rungs (auto) | plan s |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for key in sorted(rows, key=int):
        row = rows[key]
        ratio = row["peak_rss_bytes"] / row["planned_peak_bytes"]
        print(f"| {row['size']}² | {row['steps']} | {row['seconds']:.0f} | {row['peak_rss_bytes'] / gib:.2f} | "
              f"{row['planned_peak_bytes'] / gib:.2f} | {ratio:.2f} | {' / '.join(row['rungs'])} | "
              f"{row['plan_seconds']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--results", default=str(ROOT / "bench" / "highres_runs.json"))
    parser.add_argument("--rerun", action="store_true", help="run sizes already in --results again")
    parser.add_argument("--run-16k", action="store_true", help="also run 16384² (hours on 2 cores)")
    args = parser.parse_args()
    results = Path(args.results)
    rows = load(results)
    sizes = args.sizes + ([16384] if args.run_16k else [])
    for size in sizes:
        if str(size) in rows and not args.rerun:
            continue
        row = plan(size)
        verdict = "fits" if row["fits"] else "does not fit"
        print(f"{size}²: planned peak {row['planned_peak_bytes'] / 2**30:.2f} GiB ({verdict}), "
              f"rungs {row['planned_rungs']}; running linfuse generate …", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            row.update(generate(size, args.steps, folder))
        rows[str(size)] = row
        save(results, rows)
    if rows:
        print_table(rows)
    if not args.run_16k:
        row = plan(16384)
        print(f"\n16384² plan: peak {row['planned_peak_bytes'] / 2**30:.2f} GiB of {row['memory_bytes'] / 2**30:.1f}"
              f" GiB ({'fits' if row['fits'] else 'does not fit'}), rungs {', '.join(row['planned_rungs'])}, "
              f"planned in {row['plan_seconds']:.1f} s", flush=True)
        measured = [r for r in rows.values() if r.get("stage_seconds")]
        if measured:
            hours = projected_seconds(measured, 16384, args.steps) / 3600
            print(f"projected time of {args.steps} steps from the measured stages: {hours:.1f} h")


if __name__ == "__main__":
    main()
