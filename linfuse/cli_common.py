"""What the generating commands (generate, batch) share: model arguments, and loading the model they name."""

import sys

from .cli_checks import environment_model
from .errors import InvalidArgumentError

CLI_MEMORY_MODES = ("auto", "plain", "lean", "floor")  # preflight.MEMORY_MODES, without importing torch

BUNDLED_GUIDANCE = 5.0


def add_model_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="pipeline directory, Hub id, or student/teacher (UNet) / dit-student/dit-teacher "
                             "(FLUX-style) for the bundled emoji models (default: $LINFUSE_MODEL, else the bundled "
                             "student)")
    parser.add_argument("--weights", default="auto",
                        help="linear-attention weights: directory, Hub id, 'auto' (the model folder's own "
                             "linear_attention/, else published LinFusion weights for known base models) or 'none' "
                             "(teacher projections, mixers at zero)")
    parser.add_argument("--method", default="auto",
                        help="linearisation method, 'none' for softmax attention, or 'auto': none for the bundled "
                             "teachers, else the family's own (linfusion for UNets, clear for FLUX/SD3/PixArt)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default: the model's native size)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (default 7.5; 5.0 for the bundled emoji models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--highres", choices=("auto", "on", "off"), default="auto",
                        help="progressive ×2 refinement with tiled VAE (auto: when the size exceeds twice the "
                             "model's native size)")
    parser.add_argument("--upscale", choices=("latent", "pixel"), default="latent",
                        help="how the progressive mode upscales between stages")
    parser.add_argument("--ntk-factor", type=float, default=1.0,
                        help="FLUX, progressive mode: RoPE base θ·α in the refinements above the native size "
                             "(CLEAR's high-res recipe: 10; 1 = off)")
    parser.add_argument("--proportional-attention", action="store_true",
                        help="CLEAR, progressive mode: softmax scale for the token count above the native size")
    parser.add_argument("--memory-mode", choices=CLI_MEMORY_MODES, default="auto",
                        help="how the UNet runs: plain, lean (one sample at a time, in bands and chunks, skips parked "
                             "in host memory on CUDA: for 8K-16K), floor (the least memory: resnets depth-first, on "
                             "CUDA skips and residuals read back from host memory band by band; slower), or auto: "
                             "plain when the memory preflight says it fits, else the cheapest lean setting that does")
    parser.add_argument("--max-memory", default=None,
                        help="the most memory the job may use, e.g. 8GiB (as on a shared card; the preflight refuses "
                             "what does not fit in 90 %% of it). Default: what is free on the device")


def default_params(args, prompt: str = ""):
    """GenerationParams from the arguments, validated before anything is loaded (width/height 0 = native)."""
    from .pipelines import GenerationParams, parse_size
    from .pipelines.loading import is_bundled

    take_model_from_environment(args)
    bundled = is_bundled(args.model)
    guidance = args.guidance if args.guidance is not None else (BUNDLED_GUIDANCE if bundled else 7.5)
    params = GenerationParams(prompt=prompt, negative_prompt=args.negative, steps=args.steps, guidance=guidance,
                              seed=args.seed)
    if args.size:
        params.width, params.height = parse_size(args.size)
    params.validate()
    if getattr(args, "max_memory", None) is not None:
        from .pipelines.preflight import check_memory_cap

        args.memory_limit = check_memory_cap(args.max_memory, args.device)
    highres_options(args).validate()
    return params


def highres_options(args):
    """The progressive mode's options from --upscale, --memory-mode, --ntk-factor and --proportional-attention."""
    from .pipelines.highres import HighResOptions

    return HighResOptions(upscale=args.upscale, memory=args.memory_mode, ntk_factor=args.ntk_factor,
                          proportional_attention=args.proportional_attention,
                          memory_limit=getattr(args, "memory_limit", None))


def take_model_from_environment(args) -> None:
    """--model defaults to $LINFUSE_MODEL; ``args.model_source`` remembers which of the two named the model."""
    if getattr(args, "model_source", None):
        return
    args.model_source = "--model"
    if args.model is None and environment_model():
        args.model, args.model_source = environment_model(), "$LINFUSE_MODEL"


def resolve_method(args):
    """(method or None, weights) from --method / --weights, with everything that can be said about them before the
    model loads: an unknown or misspelt model (named with where it came from), an unknown method, weights without a
    conversion, and options of another family."""
    from .linearize import get_method
    from .pipelines.loading import auto_method, check_model_source, resolve_model, resolve_weights

    take_model_from_environment(args)
    try:
        check_model_source(resolve_model(args.model))  # a missing model is named before anything about weights
    except InvalidArgumentError as exc:
        if args.model_source == "--model":
            raise
        raise InvalidArgumentError(f"{args.model_source}: {exc}; fix or unset the environment variable, or pass "
                                   "--model") from exc
    explicit_method = args.method != "auto"
    if args.method == "auto":
        args.method = auto_method(args.model)
    if args.method != "none":
        get_method(args.method)
    method = None if args.method == "none" else args.method
    if method is None and args.weights not in ("auto", "none"):
        raise InvalidArgumentError(
            f"--weights {args.weights} needs a conversion, but " + ("--method none keeps" if explicit_method else
                                                                     f"{args.model} runs by default with")
            + " softmax attention; drop --weights or pass a --method (e.g. linfusion)")
    check_family_options(args, method)
    return method, (resolve_weights(args.weights, resolve_model(args.model)) if method else None)


def check_family_options(args, method: str | None, model_family: str | None = None) -> None:
    """--ntk-factor is FLUX's, --proportional-attention CLEAR's: refused for another model at every size. The family
    comes from the pipeline (after loading) or the folder's model_index.json (before); unknown = not checked yet."""
    from .pipelines.families import family_of_folder
    from .pipelines.loading import resolve_model

    model_family = model_family or family_of_folder(resolve_model(args.model))
    name = args.model or "the bundled student"
    if args.ntk_factor != 1 and model_family not in (None, "flux"):
        raise InvalidArgumentError(f"--ntk-factor scales FLUX's RoPE; {model_family} has none ({name}): drop "
                                   "--ntk-factor")
    if args.proportional_attention and method != "clear":
        raise InvalidArgumentError(f"--proportional-attention is an option of CLEAR attention; {name} runs "
                                   f"{method or 'softmax'} attention: drop it, or pass --method clear for a FLUX, SD3 "
                                   "or PixArt model")


def load_model(args, method, weights):
    from .notices import shorten_truncation_notices
    from .pipelines import load_pipeline
    from .pipelines.families import family
    from .pipelines.loading import resolve_model

    pipe = load_pipeline(resolve_model(args.model), method=method, weights=weights, device=args.device,
                         dtype=args.dtype)
    shorten_truncation_notices()
    if pipe.linfuse_report:
        print(pipe.linfuse_report, file=sys.stderr)
    check_family_options(args, method, family(pipe))  # a Hub id's family is known only now
    return pipe


def renderer(args, pipe):
    """``render(pipe, params)``: plain generation, or progressive when --highres asks for it."""
    from .pipelines import generate
    from .pipelines.highres import generate_highres

    progressive = progressive_rule(args, pipe)

    def render(pipe, params):
        if progressive(params):
            return generate_highres(pipe, params, highres_options(args))
        return generate(pipe, params, memory=args.memory_mode, memory_limit=getattr(args, "memory_limit", None))

    return render


def progressive_rule(args, pipe):
    """``progressive(params)``: whether ``render`` runs a job progressively (--highres on, or auto above twice the
    native size)."""
    from .pipelines import native_size
    from .pipelines.plan import is_progressive

    native = max(native_size(pipe))
    return lambda params: args.highres == "on" or (args.highres == "auto" and
                                                   is_progressive(params.width, params.height, native))


def check_jobs(args, pipe, jobs) -> None:
    """Every check ``render`` makes before work, the memory preflight included, for each distinct job shape (size,
    steps, guidance): a job that would be refused is refused before the first image, with generate's message."""
    from .pipelines.highres import checked_stages
    from .pipelines.text2image import denoiser_setting

    progressive = progressive_rule(args, pipe)
    limit = getattr(args, "memory_limit", None)
    shapes = {(p.width, p.height, p.steps, p.guidance > 1.0): p for p in jobs}
    for params in shapes.values():
        if progressive(params):
            checked_stages(pipe, params, highres_options(args))
        else:
            denoiser_setting(pipe, params, args.memory_mode, limit)
