"""Every UNet linear-attention variant distilled from the bundled teacher with one budget, in one table.

    python bench/variants.py [--steps 200] [--batch-size 16] [--methods sana slab …] [--out runs/bench-variants]

For each method a child process runs ``linfuse.distill.distill`` on ``assets/linfuse-emoji-teacher`` (emoji data at
64×64, AdamW, the same steps, batch, learning rate and seed for all; the losses of ``linfuse distill``: task +
kd_weight·KD + feat_weight·feature matching). Runs resume from OUT/<method> when stopped, so a second call only
evaluates. Then, in this process, each student and the un-distilled conversion generate the 8 prompts of
``assets/configs/eval_prompts.txt`` × the seeds (20 DPM-Solver steps, guidance 5) from the same noise as the teacher.

Columns: PSNR of the student's 8-bit image against the teacher's, mean over the pairs, before and after
distillation; the median seconds per training step (the trainer's log of a separate fresh run of
``--timing-steps`` steps per method, made after all training so that nothing else runs, first 2 steps left out;
with ``--timing-steps 0`` the long run's log after its first 5 steps); the peak resident
memory that ``distill()`` added to its process (VmHWM after the run minus VmRSS before it, so teacher, student,
optimiser state and activations); and the parameters each method adds to the UNet. ``hybrid`` keeps the
``--softmax-layers`` lowest-resolution layers softmax and converts the rest with LinFusion.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from procstat import memory_kib, reset_peak  # bench/procstat.py (scripts run as bench/NAME.py)

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "assets" / "linfuse-emoji-teacher"
METHODS = ["linfusion", "sana", "slab", "inline", "rala", "nalaformer", "l2vit", "transnormer", "hybrid"]


def method_options(method: str, softmax_layers: int) -> dict:
    return {"softmax_layers": softmax_layers, "base": "linfusion"} if method == "hybrid" else {}


def run_child(args) -> None:
    """Distill one method (resuming if its folder holds checkpoints) and print its figures as one JSON line.

    With ``--timing N``: a fresh run of N steps in a temporary folder, for the time per step alone.
    """
    import tempfile

    from linfuse.distill.config import from_mapping
    from linfuse.distill.recipe import DistillConfig, distill
    from linfuse.distill.trainer import read_log

    steps = args.timing or args.steps
    out = Path(tempfile.mkdtemp()) if args.timing else Path(args.out) / args.child
    config = from_mapping(DistillConfig, {
        "model": str(TEACHER), "output_dir": str(out), "method": args.child,
        "options": method_options(args.child, args.softmax_layers), "data": {"source": "emoji", "resolution": 64},
        "train": {"steps": steps, "batch_size": args.batch_size, "learning_rate": args.lr,
                  "checkpoint_every": steps, "seed": 0},
    }, "config")
    config.validate()
    before = reset_peak()
    distill(config)
    log = read_log(out / "loss_log.jsonl")
    skip = 2 if args.timing else 5
    seconds = [record["seconds"] for record in log[skip:]] or [record["seconds"] for record in log]
    peak_mib = (memory_kib("VmHWM") - before) / 1024
    print(json.dumps({"method": args.child, "seconds_per_step": statistics.median(seconds), "peak_mib": peak_mib,
                      "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"]}))


def distill_in_child(method: str, args, timing: int = 0) -> dict:
    """The child's figures; kept in OUT/<method>/bench.json (timing.json for a timing run), so a finished run is
    not re-measured as a resumed one."""
    saved = Path(args.out) / method / ("timing.json" if timing else "bench.json")
    settings = {"steps": timing or args.steps, "batch_size": args.batch_size, "lr": args.lr,
                "softmax_layers": args.softmax_layers}
    if saved.exists() and json.loads(saved.read_text()).get("settings") == settings:
        return json.loads(saved.read_text())["figures"]
    command = [sys.executable, __file__, "--child", method, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--lr", str(args.lr), "--out", args.out, "--softmax-layers",
               str(args.softmax_layers), "--timing", str(timing)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"distilling {method} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"settings": settings, "figures": figures}))
    return figures


def evaluate(methods: list[str], args) -> dict[str, tuple[float, float, int]]:
    """(PSNR before, PSNR after, parameters added) per method, against the teacher's images; kept in
    OUT/<method>/eval.json for the same seeds and run."""
    settings = {"seeds": args.seeds, "steps": args.steps}
    scores, todo = {}, []
    for method in methods:
        saved = Path(args.out) / method / "eval.json"
        if saved.exists() and json.loads(saved.read_text())["settings"] == settings:
            scores[method] = tuple(json.loads(saved.read_text())["scores"])
        else:
            todo.append(method)
    if todo:
        scores.update(_score(todo, args, settings))
    return scores


def _score(methods: list[str], args, settings: dict) -> dict[str, tuple[float, float, int]]:
    from linfuse.distill.evaluate import psnr, read_prompts
    from linfuse.linearize import linearize, read_linear_weights, unlinearize
    from linfuse.pipelines import GenerationParams, generate, load_pipeline

    pipe = load_pipeline(str(TEACHER), method=None, device="cpu")
    jobs = [GenerationParams(prompt=p, steps=20, guidance=5.0, seed=s, width=64, height=64)
            for p in read_prompts() for s in args.seeds]
    teacher = [generate(pipe, params, progress=False) for params in jobs]

    def mean_psnr() -> float:
        return statistics.mean(psnr(generate(pipe, params, progress=False), image)
                               for params, image in zip(jobs, teacher, strict=True))

    scores = {}
    for method in methods:
        report = linearize(pipe, method=method, **method_options(method, args.softmax_layers))
        before = mean_psnr()
        unlinearize(pipe)
        weights = Path(args.out) / method / "linear_attention"
        linearize(pipe, method=read_linear_weights(weights).method, weights=weights)
        scores[method] = (before, mean_psnr(), report.parameters_added)
        unlinearize(pipe)
        (Path(args.out) / method / "eval.json").write_text(json.dumps({"settings": settings,
                                                                       "scores": scores[method]}))
        print(f"evaluated {method}", file=sys.stderr)
    return scores


def print_table(rows: list[dict], args) -> None:
    print(f"\n{args.steps} steps × batch {args.batch_size}, lr {args.lr}, emoji 64×64, seed 0; PSNR over "
          f"{8 * len(args.seeds)} pairs (8 prompts × seeds {','.join(map(str, args.seeds))}), 20 steps, guidance 5\n")
    print("| method | PSNR before | PSNR after | s / step | peak MiB | params added |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['psnr_before']:.2f} dB | {row['psnr_after']:.2f} dB | "
              f"{row['seconds_per_step']:.3f} | {row['peak_mib']:.0f} | {row['params_added']:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--softmax-layers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/bench-variants")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--timing-steps", type=int, default=12,
                        help="steps of the separate short run that times each method (0: time the long run)")
    parser.add_argument("--timing", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    rows = []
    for method in args.methods:
        print(f"distilling {method} ({args.steps} steps)", file=sys.stderr)
        rows.append(distill_in_child(method, args))
    if args.timing_steps:  # after all training, one method after another on a quiet machine
        for row in rows:
            print(f"timing {row['method']} ({args.timing_steps} steps)", file=sys.stderr)
            row["seconds_per_step"] = distill_in_child(row["method"], args, args.timing_steps)["seconds_per_step"]
    scores = evaluate(args.methods, args)
    for row in rows:
        row["psnr_before"], row["psnr_after"], row["params_added"] = scores[row["method"]]
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
