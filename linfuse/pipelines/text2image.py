"""Text-to-image generation with a (linearized) diffusers pipeline."""

import torch

from .. import __version__
from ..linearize.layers import resolve_denoiser
from .families import call_arguments, native_size, size_multiple
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
             memory: str = "plain", memory_limit: int | None = None, check_memory: bool | None = None):
    """Run the pipeline once; the random stream comes from a CPU generator so a seed means the same on any device.

    ``callback_on_step_end`` is handed to the pipeline as it is (diffusers' per-step callback, e.g. for a progress
    display); by default none is passed. ``memory``: how the denoiser runs (:mod:`.lean`): "plain", "lean", or
    "auto" (the memory preflight picks: plain when it fits, else the cheapest lean setting that does).
    ``memory_limit``: bytes the job may use (as on a shared card; default what is free). The preflight refuses a
    job that does not fit (:class:`~.preflight.InsufficientMemoryError`, with the largest size that does) when
    ``check_memory`` (default: with "auto" or a ``memory_limit``).
    """
    from .lean import denoiser_lean_mode

    params.validate(multiple_of=size_multiple(pipe))
    settings = denoiser_setting(pipe, params, memory, memory_limit, check_memory)
    if progress and memory != "plain":
        from tqdm.auto import tqdm

        from .preflight import mode_name

        tqdm.write(f"memory: {params.width}x{params.height} {mode_name(settings)}")
    with denoiser_lean_mode(pipe, settings):
        return _run(pipe, params, progress, callback_on_step_end)


def denoiser_setting(pipe, params: GenerationParams, memory: str, memory_limit: int | None = None,
                     check_memory: bool | None = None):
    """The denoiser's lean settings (None: plain) for one text-to-image call, as ``memory`` asks; the memory
    preflight (:func:`~.highres.preflight_job`) runs when ``memory`` is "auto" or ``check_memory`` (default: with
    "auto" or a ``memory_limit``, as :func:`generate` and ``linfuse batch``'s checks take it)."""
    from .families import is_dit
    from .highres import HighResOptions, preflight_job
    from .offload import execution_device
    from .plan import Stage
    from .preflight import check_memory_mode, rung_ladder

    if check_memory is None:
        check_memory = memory == "auto" or memory_limit is not None

    if check_memory_mode(memory) != "auto" and not check_memory:
        return rung_ladder(memory, execution_device(resolve_denoiser(pipe)).type, dit=is_dit(pipe))[0]
    options = HighResOptions(memory=memory, memory_limit=memory_limit, check_memory=check_memory).validate()
    estimate = preflight_job(pipe, params, options, [Stage(params.width, params.height, 1.0)],
                             what="text-to-image", progressive=False)
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
