"""Text-to-image generation with a (linearized) diffusers pipeline."""

import torch

from .. import __version__
from .families import call_arguments, is_dit, native_size, size_multiple
from .parameters import GenerationParams, public_name

__all__ = ["describe_run", "generate", "native_size"]


def describe_run(pipe, params: GenerationParams, *, model: str = "", weights: str = "") -> GenerationParams:
    """Fill the bookkeeping fields (sampler, model, method, version) recorded with the image; local paths are
    recorded by name (:func:`~.parameters.public_name`)."""
    report = getattr(pipe, "linfuse_report", None)
    params.sampler = type(pipe.scheduler).__name__
    params.model = public_name(params.model or model)
    params.method = params.method or (report.method if report else "none")
    params.weights = public_name(params.weights or weights)
    params.version = f"linfuse {__version__}"
    return params


def generate(pipe, params: GenerationParams, *, progress: bool = True, callback_on_step_end=None,
             memory: str = "plain"):
    """Run the pipeline once; the random stream comes from a CPU generator so a seed means the same on any device.

    ``callback_on_step_end`` is handed to the pipeline as it is (diffusers' per-step callback, e.g. for a progress
    display); by default none is passed. ``memory``: how the UNet runs (:mod:`.lean`): "plain", "lean", or "auto"
    (the memory preflight picks: plain when it fits, else the cheapest lean setting that does).
    """
    from .lean import denoiser_lean_mode

    params.validate(multiple_of=size_multiple(pipe))
    settings = unet_mode(pipe, params, memory)
    if progress and memory != "plain":
        from tqdm.auto import tqdm

        from .preflight import mode_name

        tqdm.write(f"memory: {params.width}x{params.height} {mode_name(settings)}")
    with denoiser_lean_mode(pipe, settings):
        return _run(pipe, params, progress, callback_on_step_end)


def unet_mode(pipe, params: GenerationParams, memory: str):
    """The denoiser's lean settings (None: plain) for one text-to-image call, as ``memory`` asks."""
    from .dit_memory import dit_ladder
    from .plan import Stage
    from .preflight import check_memory_mode, estimate_memory, lean_ladder

    if check_memory_mode(memory) != "auto":
        return dit_ladder(memory)[0] if is_dit(pipe) else lean_ladder(memory, pipe.unet.device.type)[0]
    estimate = estimate_memory(pipe, [Stage(params.width, params.height, 1.0)], guidance=params.guidance > 1.0)
    return estimate.stages[0].lean


def _run(pipe, params: GenerationParams, progress: bool, callback_on_step_end):
    pipe.set_progress_bar_config(disable=not progress, desc="denoising")
    generator = torch.Generator("cpu").manual_seed(params.seed)
    extra = {"callback_on_step_end": callback_on_step_end} if callback_on_step_end is not None else {}
    result = pipe(
        prompt=params.prompt,
        width=params.width,
        height=params.height,
        num_inference_steps=params.steps,
        generator=generator,
        **call_arguments(pipe, params.guidance, params.negative_prompt),
        **extra,
    )
    return result.images[0]
