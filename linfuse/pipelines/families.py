"""Pipeline families: what differs between driving a UNet pipeline and the DiT pipelines (FLUX, SD3, PixArt).

* native size: UNet and SD3/PixArt ``sample_size`` × the VAE factor; FLUX has no such field (FluxPipeline's 128 is
  hard-coded), so a model folder may say its own in ``linfuse.json`` ({"native_size": [w, h]}), else 1024;
* size multiple: UNets 8 (or the VAE factor if larger); DiTs the VAE factor times 2 for FLUX's 2×2 latent
  packing, times the patch size for SD3/PixArt;
* guidance: classifier-free guidance is ``guidance_scale`` everywhere except FLUX, where it is ``true_cfg_scale``
  with a negative prompt (FLUX.1-dev's ``guidance_scale`` feeds its distilled guidance embedding instead);
* text length: T5 prompts are padded to ``max_sequence_length``; a model whose tokenizer is shorter gets its own;
* PixArt bins sizes to its aspect-ratio table unless told not to, and has no image-to-image pipeline;
* latents: FLUX returns ``output_type="latent"`` packed, (B, H/2·W/2, 4C); ``unpack_latents`` gives (B, C, H, W).
"""

import json
from pathlib import Path

from ..errors import InvalidArgumentError

TRANSFORMER_FAMILIES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3",
                        "PixArtTransformer2DModel": "pixart", "DiTTransformer2DModel": "dit"}
PIPELINE_FAMILIES = {"FluxPipeline": "flux", "FluxImg2ImgPipeline": "flux", "StableDiffusion3Pipeline": "sd3",
                     "StableDiffusion3Img2ImgPipeline": "sd3", "PixArtSigmaPipeline": "pixart",
                     "PixArtAlphaPipeline": "pixart", "DiTPipeline": "dit"}
TEXT_LENGTH = {"flux": 512, "sd3": 256, "pixart": 300}  # the pipelines' default max_sequence_length
SIDECAR = "linfuse.json"
FLUX_NATIVE_SIDE = 1024


def family(pipe) -> str:
    """"unet", "flux", "sd3", "pixart" or "dit" (class-conditional), from the pipeline's denoiser."""
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    name = type(getattr(pipe, "transformer", None)).__name__
    if name not in TRANSFORMER_FAMILIES:
        raise InvalidArgumentError(f"{type(pipe).__name__} has neither a UNet nor a known transformer "
                                   f"({', '.join(TRANSFORMER_FAMILIES)}); linfuse cannot drive it")
    return TRANSFORMER_FAMILIES[name]


def is_dit(pipe) -> bool:
    return family(pipe) != "unet"


def family_of_folder(model_id: str) -> str | None:
    """The family a local pipeline folder declares in its model_index.json (None: unknown or not local)."""
    index = Path(str(model_id)).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    name = json.loads(index.read_text()).get("_class_name", "")
    return PIPELINE_FAMILIES.get(name, "unet" if "StableDiffusion" in name else None)


def default_method(model_family: str | None) -> str:
    """The conversion a family takes by default: CLEAR windows for text-to-image DiTs, LiT for class-conditional
    DiT, LinFusion for UNets."""
    return {"flux": "clear", "sd3": "clear", "pixart": "clear", "dit": "lit"}.get(model_family, "linfusion")


def read_sidecar(pipe) -> dict:
    folder = Path(str(getattr(getattr(pipe, "config", {}), "_name_or_path", "") or ""))
    path = folder / SIDECAR
    return json.loads(path.read_text()) if folder.name and path.is_file() else {}


def write_sidecar(folder, *, native_size: tuple[int, int], method_options: dict | None = None) -> Path:
    """``linfuse.json`` of a model folder: its native size and the options a conversion defaults to."""
    from ..fileio import atomic_write

    data = {"native_size": list(native_size), **({"method_options": method_options} if method_options else {})}
    path = Path(folder) / SIDECAR
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def native_size(pipe) -> tuple[int, int]:
    """The resolution the model was trained at (see the module docstring)."""
    sidecar = read_sidecar(pipe)
    if "native_size" in sidecar:
        width, height = sidecar["native_size"]
        return int(width), int(height)
    kind = family(pipe)
    if kind == "unet":
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    elif kind == "flux":
        side = FLUX_NATIVE_SIDE
    else:
        side = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return side, side


def size_multiple(pipe) -> int:
    """Width and height must be multiples of this (:func:`size_rule`)."""
    transformer = getattr(pipe, "transformer", None)
    return size_rule(family(pipe), pipe.vae_scale_factor, transformer.config if transformer is not None else None)[0]


def size_rule(kind: str, vae_factor: int, transformer_config=None) -> tuple[int, int | None]:
    """(multiple, largest side) of a model's image sizes, for a loaded pipeline and the planner's configs alike: a
    UNet's sides are multiples of 8 and of its VAE factor; a DiT's of its patch (FLUX: the 2×2 packing) times the
    VAE factor, up to its position table's reach (:func:`max_side`; None: no limit of its own)."""
    if kind == "unet":  # the UNet's own down-sampling as well: 8 pixels at least, as before DiTs came
        return max(8, vae_factor), None
    patch = 2 if kind == "flux" else transformer_config["patch_size"]
    return vae_factor * patch, max_side(transformer_config, vae_factor)


def text_length(pipe) -> int | None:
    """``max_sequence_length`` for the pipeline call: the family default, or the T5 tokenizer's shorter length."""
    kind = family(pipe)
    if kind not in TEXT_LENGTH:
        return None
    tokenizer = getattr(pipe, "tokenizer_2" if kind == "flux" else "tokenizer_3" if kind == "sd3" else "tokenizer",
                        None)
    own = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    return min(TEXT_LENGTH[kind], own) if own else TEXT_LENGTH[kind]


def call_arguments(pipe, guidance: float, negative_prompt: str | None) -> dict:
    """The pipeline call's arguments for classifier-free guidance ``guidance`` (1 = none), the text length, and
    PixArt's: the size as asked (no resolution binning) and captions as given."""
    kind = family(pipe)
    out = {} if text_length(pipe) is None else {"max_sequence_length": text_length(pipe)}
    if kind == "pixart":
        out.update(use_resolution_binning=False, clean_caption=False)
    if kind == "flux":
        if pipe.transformer.config.guidance_embeds:  # FLUX.1-dev: guidance-distilled, no true CFG
            return {**out, "guidance_scale": guidance}
        if guidance > 1.0:
            return {**out, "true_cfg_scale": guidance, "negative_prompt": negative_prompt or ""}
        return out
    empty = "" if kind == "pixart" else None  # PixArt lower-cases the negative prompt: None fails there
    return {**out, "guidance_scale": guidance, "negative_prompt": negative_prompt or empty}


def unpack_latents(pipe, latents, width: int, height: int):
    """(B, C, H/f, W/f) latents from what the pipeline returned with ``output_type="latent"``."""
    if family(pipe) != "flux" or latents.dim() == 4:
        return latents
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def max_side(transformer_config: dict, vae_factor: int) -> int | None:
    """The largest side a transformer's position embedding reaches (SD3 crops a fixed table), None: no limit.
    ``transformer_config``: its config as a mapping (a JSON config, or diffusers' FrozenDict)."""
    table = transformer_config.get("pos_embed_max_size")
    return table * transformer_config["patch_size"] * vae_factor if table else None
