"""Image-to-image (SDEdit) at any size with a (linearized) pipeline: encode, noise to ``strength``, re-denoise.

The picture is encoded and decoded with the tiled VAE, so only the UNet sees the whole latent; with linear
attention its cost grows linearly in pixels. ``strength`` s runs the last int(steps·s) of ``steps`` steps from
the picture noised to that level (at least one: :func:`check_steps`): 0.2 keeps the layout and retouches detail,
0.8 keeps mostly colours.
"""

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgumentError
from ..linearize.layers import resolve_denoiser
from .families import call_arguments, native_size, size_multiple, unpack_latents
from .highres import (
    HighResOptions,
    check_family_options,
    check_softmax,
    decode_images,
    image_to_image,
    job_offload,
    preflight_job,
    stage_mode,
)
from .parameters import MAX_SIZE, GenerationParams
from .plan import Stage, denoising_steps, minimum_steps
from .tiled_vae import tiled_encode


def target_size(image: Image.Image, size: tuple[int, int] | None, multiple: int = 8) -> tuple[int, int]:
    """``size``, or (None) the picture's own size rounded down to a multiple of ``multiple``."""
    if size is not None:
        return size
    width, height = image.width // multiple * multiple, image.height // multiple * multiple
    if not 8 <= min(width, height) or max(width, height) > MAX_SIZE:
        raise InvalidArgumentError(f"the input picture is {image.width}x{image.height}; its sides must be from 8 to "
                                   f"{MAX_SIZE} pixels (or pass a size)")
    return width, height


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InvalidArgumentError(f"strength must be in (0, 1]; got {strength!r}")
    return float(strength)


def check_steps(steps: int, strength: float) -> None:
    """Refuse ``steps`` too few for ``strength`` to run one denoising step (diffusers would fail inside its
    sampler with "cannot reshape tensor of 0 elements")."""
    if denoising_steps(steps, strength) < 1:
        raise InvalidArgumentError(
            f"steps must be at least {minimum_steps(strength)} for strength {strength:g}: image-to-image runs "
            f"int(steps × strength) = int({steps} × {strength:g}) = 0 denoising steps; raise steps or strength")


def to_pixels(image: Image.Image, width: int, height: int) -> torch.Tensor:
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


@torch.no_grad()
def img2img(pipe, image: Image.Image, params: GenerationParams, strength: float = 0.5, *,
            size: tuple[int, int] | None = None, options: HighResOptions | None = None) -> Image.Image:
    """SDEdit of ``image`` towards ``params.prompt`` at ``size`` (default: the picture's own, rounded down to
    multiples of 8; see the module docstring). ``params.width/height`` are set to the size used; the UNet runs as
    ``options.memory`` says (auto: plain if it fits, else lean)."""
    options = (options or HighResOptions()).validate()
    strength = check_strength(strength)
    multiple = size_multiple(pipe)
    params.width, params.height = target_size(image, size, multiple)
    params.validate(multiple_of=multiple)
    check_steps(params.steps, strength)
    check_family_options(pipe, options)
    batch = 2 if params.guidance > 1.0 else 1
    check_softmax(pipe, params, options, batch=batch)
    estimate = preflight_job(pipe, params, options, [Stage(params.width, params.height, strength)],
                             what="image-to-image", progressive=False)
    tiling = {"tile": options.vae_tile, "overlap": options.vae_overlap}
    pixels = to_pixels(image, params.width, params.height).to(pipe.vae.device, pipe.vae.dtype)
    denoiser = resolve_denoiser(pipe)
    latents = tiled_encode(pipe.vae, pixels, **tiling).to(denoiser.device, denoiser.dtype)
    refine = image_to_image(pipe, desc="img2img")
    generator = torch.Generator("cpu").manual_seed(params.seed)
    stage = Stage(params.width, params.height, strength, lean=estimate.stages[0].lean)
    with job_offload(pipe, [stage]):
        with stage_mode(pipe, stage, options, native_size(pipe)):
            latents = refine(prompt=params.prompt, image=latents, strength=strength, num_inference_steps=params.steps,
                             generator=generator, output_type="latent", width=params.width, height=params.height,
                             **call_arguments(pipe, params.guidance, params.negative_prompt)).images
        latents = unpack_latents(pipe, latents, params.width, params.height)
        return decode_images(pipe, latents, options)[0]  # streamed bands: no float canvas
