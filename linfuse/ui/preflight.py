"""The memory preflight as the UI shows it: estimated before anything runs, in MiB, with the largest size that fits.

The figures come from :func:`linfuse.pipelines.estimate_memory` (a meta-device trace of the model at each stage's
size). Plain generation is one stage at the requested size; progressive generation (the High-res tab, and the
Generate tab above twice the model's native size) is every stage of :func:`linfuse.pipelines.plan.plan_stages`.
"""

from ..errors import InvalidArgumentError, LinfuseError
from ..pipelines import GenerationParams, HighResOptions, estimate_memory, largest_fitting_size, plan
from ..pipelines.highres import check_softmax
from ..pipelines.preflight import SAFETY, MemoryEstimate
from .models import LoadedModel
from .validation import as_float, check_method, check_model, check_size, parse_strengths, people_message


def is_progressive(loaded: LoadedModel, width: int, height: int) -> bool:
    """What the Generate tab (like ``linfuse generate --highres auto``) does: progressive above twice native."""
    return plan.is_progressive(width, height, loaded.native_side)


def mib(count: int | None) -> str:
    return "?" if count is None else f"{count / 2**20:,.1f} MiB"


def estimate(loaded: LoadedModel, width: int, height: int, guidance: float, *, progressive: bool,
             options: HighResOptions | None = None) -> MemoryEstimate:
    """The preflight's figures for this job (every stage), against ``options.memory_limit`` or the free memory."""
    options = options or HighResOptions()
    stages = plan.job_stages(width, height, loaded.native_side, progressive=progressive, strengths=options.strengths)
    return estimate_memory(loaded.pipe, stages, guidance=guidance > 1.0, upscale=options.upscale,
                           tile=options.vae_tile, model=loaded.memory_model(), limit=options.memory_limit,
                           memory=options.memory)


def largest_that_fits(loaded: LoadedModel, width: int, height: int, guidance: float,
                      options: HighResOptions, *, progressive: bool = True) -> tuple[int, int] | None:
    """:func:`linfuse.pipelines.largest_fitting_size` for this model and these options, W×H known not to fit."""
    return largest_fitting_size(loaded.pipe, width, height, native_side=loaded.native_side,
                                strengths=options.strengths, progressive=progressive, fits_now=False,
                                guidance=guidance > 1.0, upscale=options.upscale, tile=options.vae_tile,
                                model=loaded.memory_model(), limit=options.memory_limit, memory=options.memory)


def softmax_refusal(loaded: LoadedModel, params: GenerationParams, options: HighResOptions) -> str | None:
    """generate_highres's refusal of softmax attention at this size, or None."""
    try:
        check_softmax(loaded.pipe, params, options, batch=2 if params.guidance > 1.0 else 1)
    except InvalidArgumentError as exc:
        return str(exc)
    return None


def free_text(result: MemoryEstimate) -> str:
    if result.shared:
        return f"{mib(result.free_device)} free"
    return f"{mib(result.free_device)} free on {result.device}, {mib(result.free_host)} free on the host"


def peak_text(result: MemoryEstimate) -> str:
    if result.shared:
        return mib(result.peak_device)
    return f"{mib(result.peak_device)} on {result.device} + {mib(result.peak_host)} on the host"


def stage_table(result: MemoryEstimate) -> str:
    rows = ["| stage | size | UNet | MiB |", "|---|---|---|---:|"]
    for stage in result.stages:
        rows.append(f"| {stage.label} | {stage.width}×{stage.height} | {stage.mode or '—'} | "
                    f"{sum(result.stage_need(stage)) / 2**20:,.1f} |")
    return "\n".join(rows)


def describe(loaded: LoadedModel, params: GenerationParams, *, progressive: bool,
             options: HighResOptions | None = None) -> str:
    """Markdown: the estimate in MiB, whether it fits, and if not the largest size of the same shape that does."""
    options = options or HighResOptions()
    width, height = params.width, params.height
    result = estimate(loaded, width, height, params.guidance, progressive=progressive, options=options)
    denoising = sum(1 for stage in result.stages if "VAE" not in stage.label)
    mode = f"progressive, {denoising} stages" if progressive else "plain generation"
    verdict = "**fits**" if result.fits else "**does not fit**"
    lines = [f"**Memory preflight** for {width}×{height} ({mode}) with {loaded.key.describe()}:",
             f"peak **{peak_text(result)}** of {free_text(result)} → {verdict} (jobs may use {SAFETY:.0%} of what "
             "is free)."]
    if not result.fits:
        best = largest_that_fits(loaded, width, height, params.guidance, options, progressive=progressive)
        lines.append(f"The largest {width}:{height} size that fits is **{best[0]}×{best[1]}**." if best else
                     "Nothing of this aspect ratio fits; free memory or use a smaller model.")
    refusal = softmax_refusal(loaded, params, options) if progressive else None
    if refusal:
        lines.append(f"**Refused:** {refusal}")
    return "\n\n".join(lines) + "\n\n" + stage_table(result)


def estimate_markdown(models, width, height, guidance, model, method, *, progressive: bool | None = None,
                      upscale: str = "latent", strengths=None, memory_limit: int | None = None,
                      memory: str = "auto") -> str:
    """The preflight display for a form's current values; never raises (a form being edited is often incomplete):
    what is wrong is shown in place of the estimate. ``progressive=None``: as the Generate tab decides."""
    try:
        width, height = check_size(width, height)
        params = GenerationParams("", width=width, height=height, guidance=as_float("guidance", guidance)).validate()
        options = HighResOptions(upscale=upscale, strengths=parse_strengths(strengths), memory_limit=memory_limit,
                                 memory=memory)
        options.validate()
        loaded = models.get(check_model(model), check_method(method))
        if progressive is None:
            progressive = is_progressive(loaded, params.width, params.height)
        return describe(loaded, params, progressive=progressive, options=options)
    except (LinfuseError, ValueError, OSError, RuntimeError) as exc:
        return f"**Memory preflight:** cannot estimate — {people_message(exc)}"
