"""The job planner behind ``linfuse estimate``: will this model make this image on that device, and how?

It builds the model's UNet, VAE and text encoders on the meta device from configs (no weights, no network for the
architectures shipped in ``configs/``: SD-1.5, SD-2.1, SDXL; or a local pipeline folder; or a Hub id, whose
configs only are fetched), converts the UNet as ``method`` would, and runs the memory preflight
(:mod:`.preflight`) on the stages generation would run: one text-to-image stage up to twice the native size, else
the progressive stages (:mod:`.plan`). The device figure of the job is the weights (all components resident, as
the pipelines keep them, except while a stage whose rung offloads runs: then the text encoders and VAE wait in host
memory, :mod:`.offload`) plus the largest stage; it fits when that is at most ``SAFETY`` of ``memory``, the host
figure at most ``SAFETY`` of ``host_memory`` (default: this machine's available memory), and no tensor reaches
2^31 elements.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidArgumentError
from ..fileio import looks_like_hub_id
from .dit_memory import DiTMemoryModel
from .families import default_method
from .families import size_rule as family_size_rule
from .loading import BUNDLED_MODELS, resolve_model
from .parameters import MAX_SIZE, GenerationParams
from .plan import Stage, job_stages
from .preflight import MemoryEstimate, MemoryModel, check_memory_mode, estimate_memory, host_available, model_bytes
from .refusal import memory_hints, refusal_message
from .size_search import SizeSearch, candidate_sizes, load_of, sizes_beside

CONFIGS = Path(__file__).parent / "configs"
KNOWN_MODELS = tuple(sorted(p.stem for p in CONFIGS.glob("*.json")))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("cuda", "cpu")
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 1000**2, "mb": 1000**2, "mib": 2**20,
         "g": 2**30, "gb": 1000**3, "gib": 2**30, "t": 2**40, "tb": 1000**4, "tib": 2**40}


def parse_memory(text: str, name: str = "memory") -> int:
    """'24GiB', '24GB', '16G' (G = GiB), '800MiB', '1e9' → bytes; an InvalidArgumentError naming ``name``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise InvalidArgumentError(f"{name} must be an amount such as 24GiB, 24GB, 16G or 800MiB; got {text!r}")
    return int(float(match.group(1)) * UNITS[unit])


@dataclass
class ModelConfigs:
    name: str
    unet: dict | None
    vae: dict
    text_encoders: list  # transformers config objects or dicts
    tokenizer_max_length: int = 77  # DiTs: every text token the transformer sees (CLIP and T5 together for SD3)
    family: str = "unet"
    transformer: dict | None = None
    native_size: int | None = None  # pixels; None: the UNet's sample size × the VAE factor


def load_configs(model: str) -> ModelConfigs:
    """Configs of a shipped architecture (``KNOWN_MODELS``), a bundled model (``student``, ``teacher``, …: its
    folder), a local pipeline folder, or a Hub id."""
    check_model(model)
    if model in BUNDLED_MODELS:
        model = resolve_model(model)
    if model in KNOWN_MODELS:
        data = json.loads((CONFIGS / f"{model}.json").read_text())
        if "family" in data:
            return ModelConfigs(data["name"], None, data["vae"], data["text_encoders"], data["text_tokens"],
                                data["family"], data["transformer"], data["native_size"])
        return ModelConfigs(data["name"], data["unet"], data["vae"], data["text_encoders"],
                            data["tokenizer_max_length"])
    if _has_transformer(model):
        return _dit_pipeline_configs(model)
    return _pipeline_configs(model)


def check_model(model: str) -> None:
    """A shipped architecture's name, a bundled model's, a pipeline folder or a Hub id; an InvalidArgumentError
    naming ``model``."""
    if model not in KNOWN_MODELS and model not in BUNDLED_MODELS and not Path(model).expanduser().is_dir() and \
            not looks_like_hub_id(model):
        raise InvalidArgumentError(f"model must be one of {', '.join(KNOWN_MODELS)} (configs shipped), "
                                   f"{', '.join(BUNDLED_MODELS)} (the bundled models), a pipeline folder or a Hub id "
                                   f"(owner/name); got {model!r}")


def _pipeline_configs(source: str) -> ModelConfigs:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoConfig

    try:
        unet = UNet2DConditionModel.load_config(source, subfolder="unet")
        vae = AutoencoderKL.load_config(source, subfolder="vae")
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"model {source!r}: no readable unet/ and vae/ configs ({exc}); give a diffusers "
                                   "pipeline folder or Hub id, or one of " + ", ".join(KNOWN_MODELS)) from exc
    encoders = []
    for folder in ("text_encoder", "text_encoder_2"):
        try:
            encoders.append(AutoConfig.from_pretrained(source, subfolder=folder))
        except (OSError, ValueError):
            continue
    return ModelConfigs(str(source), dict(unet), dict(vae), encoders, _token_count(source))


def _has_transformer(source: str) -> bool:
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "transformer" / "config.json").is_file()
    try:
        from diffusers import DiffusionPipeline

        return "transformer" in DiffusionPipeline.load_config(source)
    except (OSError, ValueError):
        return False


def _dit_pipeline_configs(source: str) -> ModelConfigs:
    """A DiT pipeline's configs (FLUX, SD3, PixArt): transformer, VAE, text encoders, and the text length."""
    from diffusers import AutoencoderKL
    from transformers import AutoConfig

    from .families import SIDECAR, TEXT_LENGTH, TRANSFORMER_FAMILIES

    try:
        # load_config reads any subfolder's config.json whichever ConfigMixin class asks
        transformer = dict(AutoencoderKL.load_config(source, subfolder="transformer"))
        vae = dict(AutoencoderKL.load_config(source, subfolder="vae"))
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"model {source!r}: no readable transformer/ and vae/ configs ({exc})") from exc
    family = TRANSFORMER_FAMILIES.get(transformer.get("_class_name"))
    if family not in TEXT_LENGTH:
        raise InvalidArgumentError(f"model {source!r}: the planner knows FLUX, SD3 and PixArt transformers; got "
                                   f"{transformer.get('_class_name')}")
    encoders = []
    for folder in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        try:
            encoders.append(AutoConfig.from_pretrained(source, subfolder=folder))
        except (OSError, ValueError):
            continue
    sidecar = Path(source) / SIDECAR
    native = json.loads(sidecar.read_text())["native_size"][0] if sidecar.is_file() else None
    t5_length = min(TEXT_LENGTH[family], _token_count(source, "tokenizer_2" if family == "flux" else
                                                      "tokenizer_3" if family == "sd3" else "tokenizer", 512))
    tokens = t5_length + (_token_count(source) if family == "sd3" else 0)
    return ModelConfigs(str(source), None, vae, encoders, tokens, family, transformer, native)


def _token_count(source: str, folder: str = "tokenizer", default: int = 77) -> int:
    """The tokenizer's sequence length from a local folder's tokenizer config (77, as SD's CLIP, otherwise)."""
    path = Path(source) / folder / "tokenizer_config.json"
    try:
        return int(json.loads(path.read_text()).get("model_max_length", default))
    except (OSError, ValueError, TypeError):
        return default


def meta_models(configs: ModelConfigs, dtype: torch.dtype, method: str | None):
    """(UNet or transformer, VAE, text encoders) on the meta device in ``dtype``; the denoiser converted by
    ``method``. A VAE whose config asks for float32 (``force_upcast``, SDXL) is kept in float32 for half dtypes, as
    its pipeline runs it."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..linearize import linearize
    from ..linearize.twin import _quiet_diffusers

    with torch.device("meta"), _quiet_diffusers():
        if configs.transformer is not None:
            denoiser_class = getattr(diffusers, configs.transformer["_class_name"])
            denoiser = denoiser_class.from_config(configs.transformer).eval()
        else:
            denoiser = UNet2DConditionModel.from_config(configs.unet).eval()
        if method is not None:
            linearize(denoiser, method=method)
        denoiser = denoiser.to(dtype)
        vae_dtype = torch.float32 if configs.vae.get("force_upcast") and dtype != torch.float32 else dtype
        vae = AutoencoderKL.from_config(configs.vae).eval().to(vae_dtype)
        encoders = [text_encoder_from_config(config).to(dtype) for config in configs.text_encoders]
    return denoiser.requires_grad_(False), vae.requires_grad_(False), encoders


def text_encoder_from_config(config):
    """A CLIP (with or without projection) or T5 text encoder built from its config (a dict or a transformers
    config), with random weights on the current default device."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if isinstance(config, dict):
        architecture = config.get("architectures", ["CLIPTextModel"])[0]
        config_class = T5Config if architecture.startswith("T5") else CLIPTextConfig
        config = config_class(**{k: v for k, v in config.items() if k != "architectures"})
    else:
        architecture = (config.architectures or ["CLIPTextModel"])[0]
    if architecture.startswith("T5") or getattr(config, "model_type", "") == "t5":
        return T5EncoderModel(config).eval()
    model_class = CLIPTextModelWithProjection if "Projection" in architecture else CLIPTextModel
    return model_class(config).eval()


@dataclass
class JobPlan:
    model: str
    width: int
    height: int
    device: str
    dtype: str
    method: str
    memory_mode: str
    weights_bytes: int
    estimate: MemoryEstimate
    memory_bytes: int
    host_memory_bytes: int | None
    largest_fitting: tuple[int, int] | None
    family: str = "unet"

    @property
    def peak_device_bytes(self) -> int:
        """The weights (the estimate's ``resident`` bytes) and the largest stage."""
        return self.estimate.peak_device

    @property
    def peak_host_bytes(self) -> int:
        return self.estimate.peak_host

    @property
    def fits(self) -> bool:
        return self.estimate.fits  # the weights count against the device's memory (estimate_job)

    @property
    def mode(self) -> str:
        """The UNet's mode at the largest stage."""
        return self.estimate.modes[-1]

    def refusal(self, cap: str | None = None) -> str:
        """The refusal generation would give (:mod:`.refusal`); ``cap``: how the memory figure was given."""
        hints = memory_hints(memory_mode=self.memory_mode, linearized=self.method != "none",
                             method=default_method(self.family), cap=cap)
        return refusal_message(f"{self.width}x{self.height} with {self.model}", self.width, self.height,
                               self.estimate, self.largest_fitting, hints)

    def to_json(self) -> dict:
        return {
            "model": self.model, "size": [self.width, self.height], "device": self.device, "dtype": self.dtype,
            "method": self.method, "memory_mode": self.memory_mode, "fits": self.fits,
            "memory_bytes": self.memory_bytes, "host_memory_bytes": self.host_memory_bytes,
            "peak_device_bytes": self.peak_device_bytes, "peak_host_bytes": self.peak_host_bytes,
            "weights_bytes": self.weights_bytes, "max_tensor_elements": self.estimate.max_elements,
            "mode": self.mode,
            "stages": [{"label": s.label, "width": s.width, "height": s.height, "mode": s.mode or None,
                        "device_bytes": self.estimate.stage_need(s)[0], "host_bytes": self.estimate.stage_need(s)[1],
                        "released_bytes": s.released, "max_tensor_elements": s.max_elements}
                       for s in self.estimate.stages],
            "largest_fitting": list(self.largest_fitting) if self.largest_fitting else None,
        }


def estimate_job(model: str, width: int, height: int, *, memory: int, host_memory: int | None = None,
                 dtype: str = "fp16", device: str = "cuda", method: str | None = "auto",
                 memory_mode: str = "auto", guidance: float = 7.5, tile: int = 64,
                 find_largest: bool = True, progress=None) -> JobPlan:
    """Plan one image of ``width``×``height`` (see the module docstring); every argument checked first, with the
    ranges generation takes. ``find_largest=False`` skips the search for the largest size that fits
    (``largest_fitting`` is then None); ``progress(text)`` is told of each trace before it runs."""
    GenerationParams("", width=width, height=height, guidance=guidance).validate()
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if device not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    check_memory_mode(memory_mode)
    if method not in (None, "auto"):
        from ..linearize import get_method

        get_method(method)
    host_memory = host_memory if host_memory is not None else host_available()
    configs = load_configs(model)
    if method == "auto":
        method = default_method(configs.family)
    factor = 2 ** (len(configs.vae["block_out_channels"]) - 1)
    check_dit_size(configs, factor, width, height)
    denoiser, vae, encoders = meta_models(configs, DTYPES[dtype], method)
    common = {"vae": vae, "vae_factor": factor, "text_tokens": configs.tokenizer_max_length, "device_type": device,
              "offload_bytes": (model_bytes(*encoders), model_bytes(vae)) if device == "cuda" else (0, 0)}
    if configs.transformer is not None:
        memory_model = DiTMemoryModel(transformer=denoiser, family=configs.family, **common)
    else:
        memory_model = MemoryModel(unet=denoiser, **common)
    memory_model.report = progress
    weights = model_bytes(denoiser, vae, *encoders)
    native = configs.native_size or denoiser.config.sample_size * factor
    multiple = size_rule(configs, factor)[0]
    guided = guidance > 1.0

    def estimate(stages: list[Stage]) -> MemoryEstimate:
        return estimate_memory(None, stages, guidance=guided, tile=tile, model=memory_model, limit=memory,
                               memory=memory_mode, host_limit=host_memory, resident=weights)

    job = estimate(job_stages(width, height, native, multiple=multiple))
    sizes = sizes_beside(search_sizes(configs, factor, width, height), width, height, job.fits)
    search = SizeSearch(estimate, lambda size: job_stages(*size, native, multiple=multiple))
    anchors = [((width, height), job.fits, load_of(job))]
    largest = search.largest(sizes, anchors) if find_largest and sizes else None
    if find_largest and job.fits:
        largest = largest or (width, height)
    return JobPlan(model, width, height, device, dtype, method or "none", memory_mode, weights, job, memory,
                   host_memory, largest, "unet" if configs.transformer is None else configs.family)


def size_rule(configs: ModelConfigs, factor: int) -> tuple[int, int]:
    """(multiple, largest side) of a model's sizes: :func:`.families.size_rule`, MAX_SIZE where the model sets no
    limit of its own."""
    kind = "unet" if configs.transformer is None else configs.family
    multiple, limit = family_size_rule(kind, factor, configs.transformer)
    return multiple, limit or MAX_SIZE


def check_dit_size(configs: ModelConfigs, factor: int, width: int, height: int) -> None:
    """A DiT's sides must be multiples of its patch (FLUX: its 2×2 packing) and within its position table."""
    if configs.transformer is None:
        return
    multiple, limit = size_rule(configs, factor)
    for name, side in (("width", width), ("height", height)):
        if side % multiple or side > limit:
            raise InvalidArgumentError(f"size: the {name} must be a multiple of {multiple}"
                                       f" up to {limit} for {configs.name}; got {side}")


def search_sizes(configs: ModelConfigs, factor: int, width: int, height: int) -> list[tuple[int, int]]:
    """Sizes of W:H the search for the largest fit tries: every candidate up to MAX_SIZE (a DiT: within its
    position table, in multiples of its patch)."""
    multiple, limit = size_rule(configs, factor)
    return [size for size in candidate_sizes(*_top_size(width, height), multiple) if max(size) <= limit]


def _top_size(width: int, height: int) -> tuple[int, int]:
    """W:H scaled so that the longer side is MAX_SIZE (multiples of 8): where the search for the largest fit starts."""
    scale = MAX_SIZE / max(width, height)
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
