"""``linfuse batch PROMPTS.(txt|jsonl) --out DIR``: many images, resumable; under ``accelerate launch -m linfuse
batch …`` the prompts are split across the processes."""

import argparse

from .cli_checks import check_writable_folder
from .cli_common import add_model_arguments, check_jobs, default_params, load_model, renderer, resolve_method


def add_batch_command(commands) -> None:
    batch = commands.add_parser("batch", help="one image per line of a .txt or .jsonl prompt file (resumable)")
    batch.add_argument("prompts", help=".txt (one prompt per line) or .jsonl (prompt, seed, width, height, "
                                       "negative_prompt, steps, guidance per line)")
    batch.add_argument("--out", default="outputs/batch", help="output folder; finished images are kept and skipped")
    batch.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None,
                       help="--overwrite: write into an --out folder linfuse did not make; --no-overwrite: refuse to "
                            "remake stale images (made with other parameters than the prompt file now asks), which "
                            "by default are made again")
    add_model_arguments(batch)
    batch.set_defaults(run=run_batch_command)


def run_batch_command(args) -> int:
    from .pipelines import describe_run, native_size
    from .pipelines.batch import check_batch_output, read_jobs, run_batch, stale_jobs

    defaults = default_params(args)
    if not args.size:
        defaults.width = defaults.height = 0  # the model's native size, filled in after loading
    jobs = read_jobs(args.prompts, defaults)  # every line checked before the model loads
    check_writable_folder(args.out)
    check_batch_output(jobs, args.out, overwrite=args.overwrite)  # so are --out and what it holds
    method, weights = resolve_method(args)
    pipe = load_model(args, method, weights)
    native_width, native_height = native_size(pipe)
    for job in jobs:
        job.width, job.height = job.width or native_width, job.height or native_height
        describe_run(pipe, job, model=args.model or "student", weights=str(weights or ""))
    check_jobs(args, pipe, jobs)  # memory and steps of every job, before the first image
    stale = stale_jobs(jobs, args.out)
    written = run_batch(pipe, jobs, args.out, render=renderer(args, pipe), overwrite=args.overwrite)
    print(f"wrote {len(written)} images to {args.out} ({len(jobs) - len(written)} of {len(jobs)} were there "
          f"already or made by other processes; {len(stale)} stale, made with other parameters, were made again)")
    return 0
