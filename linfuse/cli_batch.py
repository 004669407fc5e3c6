"""``linfuse batch PROMPTS.(txt|jsonl) --out DIR``: many images, resumable; under ``accelerate launch -m linfuse
batch …`` the prompts are split across the processes."""

from .cli_common import add_model_arguments, default_params, load_model, renderer, resolve_method


def add_batch_command(commands) -> None:
    batch = commands.add_parser("batch", help="one image per line of a .txt or .jsonl prompt file (resumable)")
    batch.add_argument("prompts", help=".txt (one prompt per line) or .jsonl (prompt, seed, width, height, "
                                       "negative_prompt, steps, guidance per line)")
    batch.add_argument("--out", default="outputs/batch", help="output folder; existing images are kept and skipped")
    add_model_arguments(batch)
    batch.set_defaults(run=run_batch_command)


def run_batch_command(args) -> int:
    from .pipelines import describe_run, native_size
    from .pipelines.batch import read_jobs, run_batch

    defaults = default_params(args)
    sized = bool(args.size)
    if not sized:
        defaults.width = defaults.height = 8  # placeholder: the model's native size replaces it after loading
    jobs = read_jobs(args.prompts, defaults)  # every line checked before the model loads
    method, weights = resolve_method(args)
    pipe = load_model(args, method, weights)
    native = native_size(pipe)
    for job in jobs:
        if not sized and (job.width, job.height) == (8, 8):
            job.width, job.height = native
        describe_run(pipe, job, model=args.model or "student", weights=str(weights or ""))
    written = run_batch(pipe, jobs, args.out, render=renderer(args, pipe))
    print(f"wrote {len(written)} images to {args.out} ({len(jobs) - len(written)} of {len(jobs)} were there "
          "already or made by other processes)")
    return 0
