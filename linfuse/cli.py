"""The ``linfuse`` command line: ``linfuse generate PROMPT …`` and ``linfuse info``."""

import argparse
import os
import platform
import sys
from pathlib import Path

from . import __version__
from .cli_training import add_training_commands
from .errors import LinfuseError

BUNDLED_GUIDANCE = 5.0



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linfuse", description="Linear-attention diffusion models.")
    parser.add_argument("--version", action="version", version=f"linfuse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to image with a linearized model")
    gen.add_argument("prompt")
    gen.add_argument("--model", default=os.environ.get("LINFUSE_MODEL"),
                     help="pipeline directory, Hub id, or 'student'/'teacher' for the bundled emoji models "
                          "(default: $LINFUSE_MODEL, else the bundled student)")
    gen.add_argument("--weights", default="auto",
                     help="linear-attention weights: directory, Hub id, 'auto' (the model folder's own "
                          "linear_attention/, else published LinFusion weights for known base models) or 'none' "
                          "(teacher projections, mixers at zero)")
    gen.add_argument("--method", default="auto",
                     help="linearisation method, 'none' for softmax attention, or 'auto': none for the bundled "
                          "teacher, linfusion otherwise")
    gen.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default: the model's native size)")
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance scale (default 7.5; 5.0 for the bundled emoji models)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--out", default="linfuse.png", help="output PNG path (written atomically)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when available)")
    gen.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
    gen.set_defaults(run=run_generate)

    info = commands.add_parser("info", help="versions, device, and models available offline")
    info.set_defaults(run=run_info)
    add_training_commands(commands)
    return parser


def run_generate(args) -> int:
    from .linearize import get_method
    from .pipelines import GenerationParams, describe_run, generate, load_pipeline, native_size, parse_size, save_png
    from .pipelines.loading import is_bundled_teacher, resolve_model, resolve_weights

    bundled = args.model is None or args.model in ("student", "teacher")
    guidance = args.guidance if args.guidance is not None else (BUNDLED_GUIDANCE if bundled else 7.5)
    params = GenerationParams(prompt=args.prompt, negative_prompt=args.negative, steps=args.steps,
                              guidance=guidance, seed=args.seed)
    if args.size:
        params.width, params.height = parse_size(args.size)
    params.validate()  # before loading anything: a bad argument costs no model load
    if args.method == "auto":
        args.method = "none" if is_bundled_teacher(args.model) else "linfusion"
    if args.method != "none":
        get_method(args.method)  # an unknown name fails here, before any loading
    method = None if args.method == "none" else args.method
    model = resolve_model(args.model)
    weights = resolve_weights(args.weights, model) if method else None
    pipe = load_pipeline(model, method=method, weights=weights, device=args.device, dtype=args.dtype)
    if pipe.linfuse_report:
        print(pipe.linfuse_report, file=sys.stderr)
    if not args.size:
        params.width, params.height = native_size(pipe)
    describe_run(pipe, params, model=args.model or "student", weights=str(weights or ""))
    image = generate(pipe, params)
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
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LinfuseError as exc:
        print(f"linfuse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
