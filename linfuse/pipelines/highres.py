"""Progressive high-resolution generation: a base image from text, then ×2 upscale + SDEdit refinement, up to 16K.

``generate_highres(pipe, params)`` plans the stages (:mod:`.plan`), refuses what cannot work before any work (too
few ``steps`` for a refinement to run one denoising step at its strength; softmax attention beyond
``max_softmax_pixels``; a job the memory preflight says will not fit, naming the largest size that would), then runs
them with the pipeline's own components: text-to-image at the base size, and for each refinement the latent upscaled
×2 (``upscale="latent"``: bicubic on the latent; ``"pixel"``: tiled VAE decode, bicubic on the image, tiled VAE
encode) and re-denoised from strength s. The image is decoded in tiles at the end, one row of tiles at a time,
into the returned image or straight into a PNG file (:func:`write_highres_png`): no float canvas of its size.

``memory`` ("auto", "plain", "lean"; :mod:`.lean`) says how the UNet runs: "auto" takes, per stage, plain when the
preflight says it fits, else the cheapest lean setting that does; the progress output says which.

``skip_residual=α > 0`` adds DemoFusion's skip residual: after each denoising step at timestep t the latent is
pulled towards the upscaled latent noised to t, z ← c·noised(z_up, t) + (1 − c)·z with c = ((1 + cos(π(T−t)/T))/2)^α,
T the training steps: strong at high noise (keeps the layout of the smaller image), vanishing at the end.
"""

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..linearize.dit import CLEAR_MODELS, window_attention_layers
from ..linearize.layers import resolve_denoiser
from ..linearize.registry import processor_classes
from .families import call_arguments, default_method, family, is_dit, size_multiple, text_length, unpack_latents
from .lean import denoiser_lean_mode
from .offload import component_offload
from .parameters import GenerationParams
from .plan import Stage, check_refinement_steps, plan_stages
from .png_stream import write_png_bands
from .preflight import check_memory_mode, estimate_memory, memory_model_for, memory_text, mode_name
from .refusal import memory_hints, refuse
from .rope import ntk_scaled_rope
from .size_search import largest_fitting_size
from .text2image import native_size
from .tiled_vae import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    check_tiling,
    decode_bands,
    tiled_decode,
    tiled_encode,
    to_uint8,
    vae_factor,
)

UPSCALE_MODES = ("latent", "pixel")
MAX_SKIP_RESIDUAL = 10
MAX_NTK_FACTOR = 100
DEFAULT_MAX_SOFTMAX_PIXELS = 2048 * 2048
BAND_ROWS = 512  # rows converted to 8-bit at a time


@dataclass
class HighResOptions:
    upscale: str = "latent"
    strengths: tuple[float, ...] | None = None  # one per ×2 refinement; default 0.4 → 0.1
    skip_residual: float = 0.0  # DemoFusion's α (cosine_scale_1 = 3 there); 0 = off
    vae_tile: int = DEFAULT_TILE  # latent pixels
    vae_overlap: int = DEFAULT_OVERLAP
    max_softmax_pixels: int = DEFAULT_MAX_SOFTMAX_PIXELS
    check_memory: bool = True
    memory_limit: int | None = None  # bytes the job may use; default what is free now
    memory: str = "auto"  # how the UNet runs: auto, plain or lean (see the module docstring)
    ntk_factor: float = 1.0  # FLUX: RoPE base θ·α in the refinements (CLEAR's high-res recipe: 10); 1 = off
    proportional_attention: bool = False  # CLEAR: softmax scale for the token count (see linearize.clear)

    def validate(self) -> "HighResOptions":
        check_memory_mode(self.memory)
        if self.upscale not in UPSCALE_MODES:
            raise InvalidArgumentError(f"upscale must be one of {', '.join(UPSCALE_MODES)}; got {self.upscale!r}")
        if not isinstance(self.skip_residual, (int, float)) or not 0 <= self.skip_residual <= MAX_SKIP_RESIDUAL:
            raise InvalidArgumentError(
                f"skip_residual must be in [0, {MAX_SKIP_RESIDUAL}] (0 = off); got {self.skip_residual!r}")
        check_tiling(self.vae_tile, self.vae_overlap)
        if self.memory_limit is not None and (not isinstance(self.memory_limit, int) or self.memory_limit < 1):
            raise InvalidArgumentError(f"memory_limit must be a positive number of bytes or None; got "
                                       f"{self.memory_limit!r}")
        if isinstance(self.ntk_factor, bool) or not isinstance(self.ntk_factor, (int, float)) or \
                not 1 <= self.ntk_factor <= MAX_NTK_FACTOR:
            raise InvalidArgumentError(f"ntk_factor must be in [1, {MAX_NTK_FACTOR}] (1 = off); got "
                                       f"{self.ntk_factor!r}")
        if not isinstance(self.max_softmax_pixels, int) or self.max_softmax_pixels < 64 * 64:
            raise InvalidArgumentError(
                f"max_softmax_pixels must be an integer >= 4096; got {self.max_softmax_pixels!r}")
        return self


def softmax_layers(denoiser) -> list[str]:
    """Names of the UNet's self-attention layers (a DiT's window-attention layers) that still run softmax."""
    if type(denoiser).__name__ in CLEAR_MODELS:
        layers = [name for name, _ in window_attention_layers(denoiser)]
    else:
        layers = [name for name, _ in denoiser.named_modules() if name.endswith("attn1")]
    return [name for name in layers
            if not isinstance(getattr(denoiser.get_submodule(name), "processor", None), processor_classes())]


def softmax_attention_bytes(pipe, width: int, height: int, batch: int) -> int:
    """Bytes of one N×N attention matrix (all heads) at the finest softmax layer, as a math-mode SDPA holds it."""
    if is_dit(pipe):
        return dit_attention_bytes(pipe, width, height, batch)
    unet, factor = pipe.unet, pipe.vae_scale_factor
    worst = 0
    for name in softmax_layers(unet):
        attn = unet.get_submodule(name)
        depth = _depth_of(unet, name)
        tokens = math.ceil(height / factor / 2**depth) * math.ceil(width / factor / 2**depth)
        worst = max(worst, batch * attn.heads * tokens * tokens * unet.dtype.itemsize)
    return worst


def dit_attention_bytes(pipe, width: int, height: int, batch: int) -> int:
    """One N×N attention matrix (all heads) of a DiT, N its image tokens (FLUX: 2×2 packed) plus text."""
    factor = size_multiple(pipe)
    tokens = (height // factor) * (width // factor) + (text_length(pipe) or 0)
    heads = pipe.transformer.config.num_attention_heads
    return batch * heads * tokens * tokens * pipe.transformer.dtype.itemsize


def _depth_of(unet, name: str) -> int:
    parts = name.split(".")
    levels = len(unet.down_blocks)
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    return levels - 1  # mid block


def check_softmax(pipe, params: GenerationParams, options: HighResOptions, batch: int) -> None:
    layers = softmax_layers(resolve_denoiser(pipe))
    pixels = params.width * params.height
    if layers and pixels > options.max_softmax_pixels:
        need = softmax_attention_bytes(pipe, params.width, params.height, batch)
        raise InvalidArgumentError(
            f"{params.width}x{params.height} is beyond max_softmax_pixels={options.max_softmax_pixels} for a model "
            f"with {len(layers)} softmax self-attention layers: one attention matrix alone would take "
            f"{memory_text(need)} "
            "(N² in the token count). Linearize the model (linfuse.linearize(pipe) or --method linfusion), or raise "
            "max_softmax_pixels if your attention backend is memory-efficient and you accept the quadratic time."
        )


def plan_job(pipe, params: GenerationParams, options: HighResOptions) -> list[Stage]:
    """The stages of this job, after checking the parameters, the options, and that every refinement runs at
    least one denoising step."""
    params.validate(multiple_of=size_multiple(pipe))
    options.validate()
    check_family_options(pipe, options)
    stages = plan_stages(params.width, params.height, max(native_size(pipe)), options.strengths,
                         multiple=size_multiple(pipe))
    check_refinement_steps(params.steps, stages)
    return stages


def check_family_options(pipe, options: HighResOptions) -> None:
    """Options of one family only: the skip residual for UNets, NTK RoPE for FLUX, proportional attention for
    CLEAR layers."""
    if options.skip_residual and is_dit(pipe):
        raise InvalidArgumentError("skip_residual is for UNet pipelines; use skip_residual=0 with a DiT")
    if options.ntk_factor != 1 and family(pipe) != "flux":
        raise InvalidArgumentError(f"ntk_factor scales FLUX's RoPE; {family(pipe)} has none: use ntk_factor=1")
    if options.proportional_attention and not clear_processors(pipe):
        raise InvalidArgumentError("proportional_attention is an option of CLEAR attention; convert the model with "
                                   "method clear (linfuse.linearize(pipe, method='clear'), --method clear) first")


def clear_processors(pipe) -> list:
    from ..linearize.clear import ClearAttnProcessor

    return [m.processor for m in resolve_denoiser(pipe).modules() if isinstance(getattr(m, "processor", None),
                                                                          ClearAttnProcessor)]


def preflight_job(pipe, params: GenerationParams, options: HighResOptions, stages: list[Stage], model=None, *,
                  what: str = "progressive generation", progressive: bool = True, to_file: bool = False):
    """The memory estimate of ``stages``; raises InsufficientMemoryError (:mod:`.refusal`: with the largest size of
    the job's aspect ratio that fits) when it does not fit and ``options.check_memory``. ``progressive``: how the
    job is planned at other sizes (the search for the largest fit); ``to_file``: the final image is streamed to a
    file, not held."""
    guidance = params.guidance > 1.0
    model = model or memory_model_for(pipe)
    common = {"guidance": guidance, "upscale": options.upscale, "tile": options.vae_tile, "model": model,
              "limit": options.memory_limit, "memory": options.memory, "to_file": to_file}
    estimate = estimate_memory(pipe, stages, **common)
    if options.check_memory and not estimate.fits:
        best = largest_fitting_size(pipe, params.width, params.height, native_side=max(native_size(pipe)),
                                    strengths=options.strengths, progressive=progressive, requested=estimate,
                                    **common)
        hints = memory_hints(memory_mode=options.memory, linearized=not softmax_layers(resolve_denoiser(pipe)),
                             method=default_method(None if family(pipe) == "unet" else family(pipe)),
                             cap="a larger memory cap (--max-memory, memory_limit=)" if options.memory_limit
                             is not None else None)
        refuse(f"{params.width}x{params.height} {what}", params.width, params.height, estimate, best, hints)
    return estimate


def upscale_latents(pipe, latents: torch.Tensor, stage: Stage, options: HighResOptions) -> torch.Tensor:
    factor = pipe.vae_scale_factor
    size = (stage.height // factor, stage.width // factor)
    if options.upscale == "latent":
        return F.interpolate(latents.float(), size=size, mode="bicubic", align_corners=False).to(latents.dtype)
    tiling = {"tile": options.vae_tile, "overlap": options.vae_overlap}
    image = tiled_decode(pipe.vae, latents, **tiling)
    image = F.interpolate(image, size=(stage.height, stage.width), mode="bicubic", align_corners=False).clamp_(-1, 1)
    return tiled_encode(pipe.vae, image, **tiling).to(latents.device, latents.dtype)


def skip_residual_callback(reference: torch.Tensor, alpha: float, generator: torch.Generator):
    """DemoFusion's skip residual as a diffusers ``callback_on_step_end`` (see the module docstring)."""
    noise = torch.randn(reference.shape, generator=generator, dtype=torch.float32).to(reference)

    def callback(pipe, index: int, timestep, tensors: dict) -> dict:
        timesteps = pipe.scheduler.timesteps
        if index + 1 >= len(timesteps):
            return tensors
        following = timesteps[index + 1]
        total = pipe.scheduler.config.num_train_timesteps
        weight = ((1 + math.cos(math.pi * (total - float(following)) / total)) / 2) ** alpha
        noised = pipe.scheduler.add_noise(reference, noise, following.reshape(1))
        tensors["latents"] = weight * noised + (1 - weight) * tensors["latents"]
        return tensors

    return callback


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] to 8-bit RGB images, converted in bands of rows (no full-size float temporaries)."""
    out = []
    for image in images:
        array = np.empty((image.shape[1], image.shape[2], 3), dtype=np.uint8)
        for top in range(0, image.shape[1], BAND_ROWS):
            array[top:top + BAND_ROWS] = to_uint8(image[:, top:top + BAND_ROWS].to(torch.float32, copy=True)).numpy()
        out.append(Image.fromarray(array))
    return out


def generate_highres(pipe, params: GenerationParams, options: HighResOptions | None = None, *,
                     progress: bool = True) -> Image.Image:
    """One image of params.width × params.height by progressive refinement (see the module docstring)."""
    options = options or HighResOptions()
    stages = checked_stages(pipe, params, options)
    with job_offload(pipe, stages):
        latents = highres_latents(pipe, params, options, stages=stages, progress=progress)
        return decode_images(pipe, latents, options)[0]


def write_highres_png(pipe, params: GenerationParams, options: HighResOptions, path, *, progress: bool = True,
                      text: dict[str, str] | None = None):
    """:func:`generate_highres` written to the PNG ``path`` while it is decoded (:mod:`.png_stream`): neither a
    float canvas nor the 8-bit image exists whole. ``text``: the PNG's text chunks. Returns the path."""
    stages = checked_stages(pipe, params, options, to_file=True)
    with job_offload(pipe, stages):
        latents = highres_latents(pipe, params, options, stages=stages, progress=progress)
        return decode_to_png(pipe, latents[:1], options, path, text)


def job_offload(pipe, stages: list[Stage]):
    """The whole job (its stages, the VAE between them, the final decode) with the text encoders and VAE in host
    memory when a stage's rung offloads them (:func:`.offload.component_offload`): the VAE then joins only to encode
    or decode, the text encoders only to encode a prompt, as the preflight counts it."""
    return component_offload(pipe, enabled=any(getattr(stage.lean, "offload", False) for stage in stages))


def decode_to_png(pipe, latents: torch.Tensor, options: HighResOptions, path, text: dict[str, str] | None = None):
    """One image's latents, (1, C, h, w), decoded in tiles and written to the PNG ``path`` band by band as the decode
    streams them (atomically); equal to ``decode_images(...)[0]`` saved. Returns the path."""
    factor = vae_factor(pipe.vae)
    bands = (band[0].numpy() for _, band in decode_bands(pipe.vae, latents, tile=options.vae_tile,
                                                           overlap=options.vae_overlap))
    return write_png_bands(path, latents.shape[3] * factor, latents.shape[2] * factor, bands, text)


def decode(pipe, latents: torch.Tensor, options: HighResOptions) -> torch.Tensor:
    """The final latents decoded in tiles: (B, 3, H, W) in [-1, 1], on the CPU (the float canvas, for outputs that
    need floats; images come from :func:`decode_images`)."""
    return tiled_decode(pipe.vae, latents, tile=options.vae_tile, overlap=options.vae_overlap)


def decode_images(pipe, latents: torch.Tensor, options: HighResOptions) -> list[Image.Image]:
    """The final latents decoded in tiles to 8-bit images, filled band by band as the decode streams them
    (:func:`~.tiled_vae.decode_bands`; no float canvas); equal to ``to_pil(decode(...))``."""
    factor = vae_factor(pipe.vae)
    batch, _, height, width = latents.shape
    images = [Image.new("RGB", (width * factor, height * factor)) for _ in range(batch)]
    for top, band in decode_bands(pipe.vae, latents, tile=options.vae_tile, overlap=options.vae_overlap):
        for image, rows in zip(images, band.numpy(), strict=True):
            image.paste(Image.fromarray(rows), (0, top))
    return images


def checked_stages(pipe, params: GenerationParams, options: HighResOptions, *, to_file: bool = False
                   ) -> list[Stage]:
    """The job's stages, after every check that comes before work: parameters, options, refinement steps, softmax
    size and the memory preflight, each with the UNet mode it runs (``Stage.lean``). Jobs of the same size and
    options share them. ``to_file``: the image is streamed to a file (:func:`write_highres_png`), not returned."""
    stages = plan_job(pipe, params, options)
    check_softmax(pipe, params, options, batch=2 if params.guidance > 1.0 else 1)
    estimate = preflight_job(pipe, params, options, stages, to_file=to_file)
    modes = [s.lean for s in estimate.stages if s.denoising]
    return [replace(stage, lean=lean) for stage, lean in zip(stages, modes, strict=True)]


def highres_latents(pipe, params: GenerationParams, options: HighResOptions, *, stages: list[Stage] | None = None,
                    generator=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                    progress: bool = True) -> torch.Tensor:
    """The final stage's latents of one progressive job, run stage by stage.

    ``stages`` come from :func:`checked_stages` (computed here when not given); ``generator`` is the random stream
    (default: a CPU generator seeded with ``params.seed``); ``callback_on_step_end`` is diffusers' per-step callback,
    called in every stage (after the skip residual)."""
    stages = stages or checked_stages(pipe, params, options)
    pipe.set_progress_bar_config(disable=True)
    refine = image_to_image(pipe, disable=True)
    generator = generator or torch.Generator("cpu").manual_seed(params.seed)
    common = {"prompt": params.prompt, "num_inference_steps": params.steps, "generator": generator,
              "output_type": "latent", **call_arguments(pipe, params.guidance, params.negative_prompt)}
    inputs = list(dict.fromkeys(["latents", *callback_on_step_end_tensor_inputs]))
    bar = tqdm(total=len(stages), desc="high-res stages", disable=not progress)
    if progress:
        tqdm.write("memory: " + "; ".join(f"{s.width}x{s.height} {mode_name(s.lean)}" for s in stages))
    base = stages[0]
    with stage_mode(pipe, base, options, native_size(pipe)):
        latents = pipe(width=base.width, height=base.height, **common,
                       **_callbacks(None, callback_on_step_end, inputs)).images
    latents = unpack_latents(pipe, latents, base.width, base.height)
    bar.update(1)
    for stage in stages[1:]:
        bar.set_postfix_str(f"{stage.width}x{stage.height} s={stage.strength:g} {mode_name(stage.lean)}")
        upscaled = upscale_latents(pipe, latents, stage, options)
        skip = skip_residual_callback(upscaled, options.skip_residual, generator) if options.skip_residual > 0 \
            else None
        with stage_mode(pipe, stage, options, native_size(pipe)):
            latents = refine(image=upscaled, strength=stage.strength, width=stage.width, height=stage.height, **common,
                             **_callbacks(skip, callback_on_step_end, inputs)).images
        latents = unpack_latents(pipe, latents, stage.width, stage.height)
        bar.update(1)
    bar.close()
    return latents


def image_to_image(pipe, **progress):
    """``refine(image=latents, strength=s, width=W, height=H, **call)``: the family's image-to-image pipeline over
    the same components (SDEdit through the pipeline itself for PixArt, which has none); UNet img2img pipelines
    take their size from the latents, DiT ones are told it. ``progress``: its progress-bar settings."""
    from diffusers import AutoPipelineForImage2Image

    if family(pipe) == "pixart":
        return sdedit_through(pipe)
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    img2img.set_progress_bar_config(**progress)
    dit = is_dit(pipe)

    def refine(*, width: int, height: int, **call):
        return img2img(**call, **({"width": width, "height": height} if dit else {}))

    return refine


def sdedit_through(pipe):
    """Image-to-image for a text-to-image pipeline that has none (PixArt): the latents noised to the first kept
    timestep with the scheduler's ``add_noise``, then denoised by the pipeline over the last int(steps·s) steps."""

    def refine(*, image, strength, num_inference_steps, generator, **call):
        pipe.scheduler.set_timesteps(num_inference_steps)
        kept = pipe.scheduler.timesteps[num_inference_steps - int(num_inference_steps * strength):]
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32).to(image)
        noised = pipe.scheduler.add_noise(image, noise, kept[:1])
        return pipe(latents=noised, timesteps=kept.tolist(), generator=generator, **call)

    return refine


@contextmanager
def stage_mode(pipe, stage: Stage, options: HighResOptions, native: tuple[int, int]):
    """How the denoiser runs one stage: in its lean setting (the preflight's choice); a DiT above its native size
    with NTK-scaled RoPE and CLEAR's proportional attention (softmax scale for the native token count) when the
    options ask."""
    above = stage.width * stage.height > native[0] * native[1]
    with ExitStack() as stack:
        stack.enter_context(denoiser_lean_mode(pipe, stage.lean))
        if above and options.ntk_factor != 1:  # FLUX only (check_family_options)
            stack.enter_context(ntk_scaled_rope(pipe.transformer, options.ntk_factor))
        if options.proportional_attention:
            stack.enter_context(proportional_attention(pipe, native))
        yield


@contextmanager
def proportional_attention(pipe, native: tuple[int, int]):
    """CLEAR processors with proportional attention, trained length = the native image plus text tokens."""
    factor = size_multiple(pipe)
    train_tokens = (native[0] // factor) * (native[1] // factor) + (text_length(pipe) or 0)
    processors = clear_processors(pipe)
    before = [(p.proportional_attention, p.train_tokens) for p in processors]
    for processor in processors:
        processor.proportional_attention, processor.train_tokens = True, train_tokens
    try:
        yield
    finally:
        for processor, (on, tokens) in zip(processors, before, strict=True):
            processor.proportional_attention, processor.train_tokens = on, tokens


def _callbacks(skip, user, inputs: list[str]) -> dict:
    """The stage's ``callback_on_step_end`` arguments: the skip residual, then the user's callback."""
    if skip is None and user is None:
        return {}
    if skip is None or user is None:
        return {"callback_on_step_end": skip or user, "callback_on_step_end_tensor_inputs": inputs}

    def both(pipe, index, timestep, tensors):
        return user(pipe, index, timestep, skip(pipe, index, timestep, tensors))

    return {"callback_on_step_end": both, "callback_on_step_end_tensor_inputs": inputs}
