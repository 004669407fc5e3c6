"""The ``linfuse`` command line: generate, batch, img2img, upscale, info, and the training and evaluation commands."""

import argparse
import os
import platform
import sys
from pathlib import Path

from . import __version__
from .cli_batch import add_batch_command
from .cli_checks import check_environment, check_output_file
from .cli_common import (
    add_model_arguments,
    default_params,
    highres_options,
    load_model,
    progressive_rule,
    renderer,
    resolve_method,
)
from .cli_companions import add_companion_commands
from .cli_estimate import add_estimate_command
from .cli_training import add_training_commands
from .errors import LinfuseError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linfuse", description="Linear-attention diffusion models.")
    parser.add_argument("--version", action="version", version=f"linfuse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to image with a linearized model")
    gen.add_argument("prompt")
    add_model_arguments(gen)
    gen.add_argument("--out", default="linfuse.png", help="output PNG path (written atomically)")
    gen.set_defaults(run=run_generate)

    add_batch_command(commands)
    add_estimate_command(commands)
    info = commands.add_parser("info", help="versions, device, and models available offline")
    info.set_defaults(run=run_info)
    add_training_commands(commands)
    add_companion_commands(commands)
    return parser


def run_generate(args) -> int:
    from .pipelines import describe_run, native_size, save_png
    from .pipelines.highres import write_highres_png
    from .pipelines.parameters import png_text

    params = default_params(args, args.prompt)  # before loading anything: a bad argument costs no model load
    check_output_file(args.out)
    method, weights = resolve_method(args)
    pipe = load_model(args, method, weights)
    if not args.size:
        params.width, params.height = native_size(pipe)
    describe_run(pipe, params, model=args.model or "student", weights=str(weights or ""))
    if progressive_rule(args, pipe)(params):  # written while it is decoded: the image never exists whole
        path = write_highres_png(pipe, params, highres_options(args), args.out, text=png_text(params))
        print(f"wrote {path} ({params.width}x{params.height})")
        return 0
    image = renderer(args, pipe)(pipe, params)
    path = save_png(image, args.out, params)
    print(f"wrote {path} ({image.width}x{image.height})")
    return 0


def run_info(args) -> int:
    import importlib.metadata as md

    import torch

    print(f"linfuse {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for name in ("torch", "diffusers", "transformers", "accelerate", "triton", "safetensors", "gradio",
                 "huggingface_hub"):
        try:
            print(f"  {name:16s} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"  {name:16s} not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"device cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
    else:
        print(f"device cpu: {os.cpu_count()} cores, no CUDA GPU visible")
    _print_offline_models()
    return 0


def _print_offline_models() -> None:
    from .pipelines import LINFUSION_WEIGHTS

    assets = Path(__file__).resolve().parents[1] / "assets"
    bundled = sorted(p.name for p in assets.iterdir() if (p / "model_index.json").exists()) if assets.is_dir() else []
    print(f"bundled models: {', '.join(bundled) if bundled else 'none'}")
    known = set(LINFUSION_WEIGHTS) | set(LINFUSION_WEIGHTS.values())
    try:
        from huggingface_hub import scan_cache_dir

        cached = sorted(repo.repo_id for repo in scan_cache_dir().repos)
    except Exception as exc:  # an absent or unreadable cache is a normal state, not a failure of `info`
        print(f"Hugging Face cache (offline): none ({type(exc).__name__})")
        return
    print("Hugging Face cache (offline): " + (", ".join(
        f"{repo}{' [known]' if repo in known else ''}" for repo in cached) if cached else "empty"))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 refused input (one line on stderr, nothing written), 130 interrupted
    (Ctrl-C: one line, no traceback; atomic writes leave no partial file); ``estimate`` uses 1 for a job that does
    not fit."""
    from .notices import quiet_third_party_notices

    try:
        args = build_parser().parse_args(argv)
        quiet_third_party_notices()
        check_environment()  # a bad LINFUSE_* value is named as such, before any command starts
        return args.run(args)
    except LinfuseError as exc:
        print(f"linfuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("linfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
