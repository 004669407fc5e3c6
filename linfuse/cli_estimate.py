"""``linfuse estimate``: plan a job's memory without weights (see :mod:`linfuse.pipelines.planner`)."""

import json
import sys
from pathlib import Path

# the planner's shipped configs, listed without importing the pipelines (and diffusers) to build the parser
KNOWN_MODELS = sorted(p.stem for p in (Path(__file__).parent / "pipelines" / "configs").glob("*.json"))
BUNDLED_NAMES = ("student", "teacher", "dit-student", "dit-teacher")  # as --model takes them in every command
EXIT_DOES_NOT_FIT = 1


def add_estimate_command(commands) -> None:
    estimate = commands.add_parser(
        "estimate", help="will this model make this image on that device? memory per stage, without weights",
        description="Plan one image's memory from the model's configs (no weights): every stage (device and host), "
                    "the weights, the peak, whether it fits, the denoiser mode auto picks, and the largest size of the "
                    "same aspect ratio that fits. Progress goes to stderr while it traces.",
        epilog="Exit status: 0 when the job fits, 1 when it does not (the table, then the refusal generation would "
               "give, on stderr), 2 for a bad argument.")
    estimate.add_argument("--model", required=True,
                          help=f"{', '.join(KNOWN_MODELS)} (configs shipped), {', '.join(BUNDLED_NAMES)} (the bundled "
                               "models), a pipeline folder, or a Hub id (configs only are fetched)")
    estimate.add_argument("--size", required=True, help="WIDTHxHEIGHT, multiples of 8 up to 16384")
    estimate.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default fp16)")
    estimate.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    estimate.add_argument("--memory", default=None,
                          help="device memory the job may use, e.g. 24GiB (default: what is free on this machine's "
                               "device)")
    estimate.add_argument("--host-memory", default=None,
                          help="host memory, for parked skips and image canvases (default: this machine's available)")
    estimate.add_argument("--method", default="auto",
                          help="linearisation method, none for softmax, or auto (default): linfusion for UNets, "
                               "clear for FLUX/SD3/PixArt")
    estimate.add_argument("--memory-mode", default="auto", help="auto, plain, lean or floor (default auto)")
    estimate.add_argument("--guidance", type=float, default=7.5,
                          help="from 0 to 100, as generate takes it; > 1 runs classifier-free guidance (batch 2)")
    estimate.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    estimate.set_defaults(run=run_estimate)


def device_memory(device: str) -> int:
    """What is free on this machine's ``device``; an error naming --memory when there is no such device."""
    import torch

    from .errors import InvalidArgumentError
    from .pipelines.preflight import free_memory

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("memory: this machine has no CUDA device to measure; pass --memory, e.g. "
                                   "--memory 24GiB for a 24 GB card")
    free = free_memory(torch.device(device))[0]
    if free is None:
        raise InvalidArgumentError("memory: cannot read this machine's available memory; pass --memory")
    return free


def run_estimate(args) -> int:
    from .errors import InvalidArgumentError
    from .pipelines import GenerationParams, parse_size
    from .pipelines.planner import check_model, estimate_job, parse_memory
    from .pipelines.preflight import MEMORY_MODES

    if args.memory_mode not in MEMORY_MODES:
        raise InvalidArgumentError(f"--memory-mode must be one of {', '.join(MEMORY_MODES)}; got {args.memory_mode!r}")
    width, height = parse_size(args.size)
    GenerationParams("", width=width, height=height, guidance=args.guidance).validate()  # generate's ranges
    check_model(args.model)  # the arguments first, then what this machine has
    memory = parse_memory(args.memory, "--memory") if args.memory else None
    host = parse_memory(args.host_memory, "--host-memory") if args.host_memory else None
    method = None if args.method == "none" else args.method  # "auto": the family's own, chosen by the planner
    say(f"planning {args.model} at {width}x{height} ({args.dtype} on {args.device}) from its configs")
    plan = estimate_job(args.model, width, height, memory=memory or device_memory(args.device), host_memory=host,
                        dtype=args.dtype, device=args.device, method=method, memory_mode=args.memory_mode,
                        guidance=args.guidance, progress=say)
    cap = "a larger --memory" if args.memory else None
    if args.json:
        print(json.dumps({**plan.to_json(), "refusal": None if plan.fits else plan.refusal(cap)}, indent=1))
    else:
        print(describe(plan))
    if plan.fits:
        return 0
    print(f"linfuse: {plan.refusal(cap)}", file=sys.stderr)
    return EXIT_DOES_NOT_FIT


def say(text: str) -> None:
    """Progress on stderr (the table or JSON on stdout stays clean)."""
    print(f"estimate: {text}", file=sys.stderr, flush=True)


def describe(plan) -> str:
    from .pipelines.preflight import SAFETY
    from .pipelines.preflight import memory_text as gib

    data = plan.to_json()
    rows = [f"{plan.model} {plan.width}x{plan.height}, {plan.dtype} on {plan.device}, method {plan.method}, "
            f"memory mode {plan.memory_mode}:",
            "| stage | size | denoiser mode | device | host | weights moved to host | largest tensor |",
            "|---|---|---|---:|---:|---:|---:|"]
    rows += [f"| {s['label']} | {s['width']}x{s['height']} | {s['mode'] or '—'} | {gib(s['device_bytes'])} | "
             f"{gib(s['host_bytes'])} | {gib(s['released_bytes']) if s['released_bytes'] else '—'} | "
             f"{s['max_tensor_elements']:.3g} |" for s in data["stages"]]
    largest = data["largest_fitting"]
    verdict = "fits" if plan.fits else "does NOT fit"
    rows += [f"weights {gib(plan.weights_bytes)}; peak device {gib(plan.peak_device_bytes)} (weights + largest "
             f"stage, net of the weights it moves to host) of {gib(plan.memory_bytes)}; peak host "
             f"{gib(plan.peak_host_bytes)}; largest tensor "
             f"{plan.estimate.max_elements:.3g} elements (limit 2^31 = 2.15e9)",
             f"{verdict} (a job may use at most {SAFETY:.0%} of each memory); denoiser mode at the last stage: "
             f"{plan.mode}; largest "
             f"{plan.width}:{plan.height} size that fits: {f'{largest[0]}x{largest[1]}' if largest else 'none'}"]
    return "\n".join(rows)
