"""``load_pipeline``: a ready diffusers text-to-image pipeline, linearized."""

import json
import os
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, LinfuseError
from ..fileio import looks_like_hub_id
from ..linearize import get_method, linearize
from ..linearize.weights import resolve_weights_dir
from .families import default_method, family, read_sidecar

# Published LinFusion weights for base models (Hub ids); used by weights="auto".
LINFUSION_WEIGHTS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Yuanshi/LinFusion-1-5",
    "runwayml/stable-diffusion-v1-5": "Yuanshi/LinFusion-1-5",
    "CompVis/stable-diffusion-v1-4": "Yuanshi/LinFusion-1-5",
    "Lykon/dreamshaper-8": "Yuanshi/LinFusion-1-5",
    "stablediffusionapi/realistic-vision-v51": "Yuanshi/LinFusion-1-5",
    "stabilityai/stable-diffusion-2-1": "Yuanshi/LinFusion-2-1",
    "stabilityai/stable-diffusion-2-1-base": "Yuanshi/LinFusion-2-1",
    "stabilityai/stable-diffusion-xl-base-1.0": "Yuanshi/LinFusion-XL",
}
ASSETS = Path(__file__).resolve().parents[2] / "assets"
# Models shipped in assets/ (trained here, see README): what `--model student` / `--model teacher` name.
BUNDLED_MODELS = {"student": ASSETS / "linfuse-emoji-student", "teacher": ASSETS / "linfuse-emoji-teacher",
                  "dit-student": ASSETS / "linfuse-emoji-dit-student",
                  "dit-teacher": ASSETS / "linfuse-emoji-dit-teacher"}
BUNDLED_TEACHERS = ("teacher", "dit-teacher")
DEFAULT_MODEL = "student"
LINEAR_WEIGHTS_SUBFOLDER = "linear_attention"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device must be like 'cpu', 'cuda' or 'cuda:1'; got {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device 'cuda' was asked for but no CUDA GPU is visible; use device='cpu'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


def bundled_name(model) -> str | None:
    """The BUNDLED_MODELS key ``model`` names: the key itself, or its folder's name as `linfuse info` prints it
    (``linfuse-emoji-student``) when no such path exists here; None for anything else."""
    if not isinstance(model, str):
        return None
    if model in BUNDLED_MODELS:
        return model
    by_folder = {path.name: name for name, path in BUNDLED_MODELS.items()}
    return by_folder.get(model) if not Path(model).exists() else None


def resolve_model(model):
    """None -> the bundled student; "student"/"teacher" (or their folder names) -> the bundled pipeline folders;
    anything else unchanged."""
    if model is None:
        model = DEFAULT_MODEL
    name = bundled_name(model)
    if name is not None:
        path = BUNDLED_MODELS[name]
        if not (path / "model_index.json").exists():
            raise LinfuseError(f"the bundled {name} model is missing at {path}; reinstall from a full clone of "
                               "linfuse (assets/ ships with the repository) or pass --model")
        return str(path)
    return model


def is_bundled_teacher(model) -> bool:
    return model is not None and (bundled_name(str(model)) in BUNDLED_TEACHERS
                                  or str(model) in [str(BUNDLED_MODELS[t]) for t in BUNDLED_TEACHERS])


def auto_method(model) -> str:
    """What method "auto" means for ``model``: "none" for the bundled teachers, else the family's own conversion
    (:func:`~.families.default_method`, read from a local folder's model_index.json; linfusion when unknown)."""
    from .families import family_of_folder

    if is_bundled_teacher(model):
        return "none"
    return default_method(family_of_folder(resolve_model(model)))


def is_bundled(model) -> bool:
    """None (the default student) or a name or folder of BUNDLED_MODELS."""
    return model is None or bundled_name(str(model)) is not None or str(model) in map(str, BUNDLED_MODELS.values())


def resolve_weights(weights, model_id: str):
    """None/"none" -> no weights; "auto" -> weights inside the pipeline folder (``linear_attention/``, as a
    distilled student ships them), else the published LinFusion weights for a known base model, else an error;
    "default" -> like "auto" but None (the teacher's projections) when neither exists."""
    if weights is None or weights == "none":
        return None
    if weights == "default":
        try:
            return resolve_weights("auto", model_id)
        except InvalidArgumentError:
            return None
    if weights != "auto":
        return weights
    inside = Path(model_id).expanduser() / LINEAR_WEIGHTS_SUBFOLDER
    if (inside / "linear_attention.json").exists():
        return str(inside)
    if model_id in LINFUSION_WEIGHTS:
        return LINFUSION_WEIGHTS[model_id]
    raise InvalidArgumentError(
        f"weights='auto' knows published weights only for {', '.join(sorted(LINFUSION_WEIGHTS))}; for {model_id!r} "
        "pass a weights directory, or weights=None (CLI: --weights none) to start from the teacher's projections, "
        "which needs distillation to give good images"
    )


def load_pipeline(model=None, *, method: str | None = "auto", weights="default", device=None, dtype=None):
    """Load a text-to-image pipeline and convert its self-attention.

    Args:
        model: a local pipeline directory, a Hub id (fetched by diffusers when online), a pipeline object, or
            "student" / "teacher" / "dit-student" / "dit-teacher" / None for the models bundled in assets/ (None =
            the distilled UNet student).
        method: linearisation method name, None to keep softmax attention, or "auto" (the default): the family's
            own (:func:`~.families.default_method`: linfusion for UNets, clear for FLUX/SD3/PixArt, lit for DiT).
        weights: directory / Hub id of linear-attention weights; "auto": the model folder's ``linear_attention/``
            or the published LinFusion weights of a known base model (an error if neither); "default" (the
            default): the same, else the teacher's projections; None: the teacher's projections (mixers at zero).
        device: "cpu", "cuda", …; default CUDA when available.
        dtype: "fp32", "fp16", "bf16" or a torch dtype; default fp16 on CUDA, fp32 on CPU.

    Returns the pipeline, moved to the device, with the conversion report as ``pipe.linfuse_report``.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if method and method != "auto":
        get_method(method)
    model = resolve_model(model)
    is_path = isinstance(model, (str, os.PathLike))
    model_id = str(model) if is_path else model.config.get("_name_or_path", "") or type(model).__name__
    if is_path:
        check_model_source(model_id)  # before the weights: a missing model is the first thing to say
    weights = resolve_weights(weights, model_id) if method else None
    if weights is not None:  # a missing directory or an unreachable Hub id fails here, before the model loads
        weights = resolve_weights_dir(weights)
    pipe = _from_pretrained(model_id, dtype) if is_path else model.to(dtype=dtype)
    if method == "auto":
        method = default_method(family(pipe))
    options = {} if weights is not None else read_sidecar(pipe).get("method_options", {}).get(method or "", {})
    pipe.linfuse_report = linearize(pipe, method=method, weights=weights, **options) if method else None
    return pipe.to(device)


def check_model_source(model_id: str) -> None:
    """A model must be a pipeline folder (holding model_index.json) or look like a Hub id (owner/name)."""
    path = Path(model_id).expanduser()
    what = "a diffusers pipeline folder (save_pretrained's model_index.json and component folders)"
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return
        if (path / "linear_attention.json").is_file():
            raise InvalidArgumentError(f"model {model_id!r} is a linear-attention weights folder; pass it as "
                                       "--weights and the pipeline it was made for as --model")
        raise InvalidArgumentError(f"model {model_id!r} has no model_index.json; pass {what}, a Hub id like "
                                   f"owner/name, or one of {', '.join(BUNDLED_MODELS)}")
    if looks_like_hub_id(model_id):
        return
    if path.exists():
        raise InvalidArgumentError(f"model {model_id!r} is a file; pass {what} or a Hub id like owner/name")
    raise InvalidArgumentError(f"model {model_id!r} does not exist{_did_you_mean(model_id)}; pass {what}, a Hub id "
                               f"like owner/name, or one of {', '.join(BUNDLED_MODELS)}")


def _did_you_mean(model_id: str) -> str:
    import difflib

    names = [*BUNDLED_MODELS, *(path.name for path in BUNDLED_MODELS.values())]
    close = difflib.get_close_matches(Path(model_id).name, names, n=1, cutoff=0.6)
    return f" (did you mean {bundled_name(close[0])!r}?)" if close else ""


def _from_pretrained(model_id: str, dtype: torch.dtype):
    from diffusers import AutoPipelineForText2Image

    path = Path(model_id).expanduser()
    check_model_source(model_id)
    source = str(path) if path.is_dir() else model_id
    absent = _absent_components(path)
    try:
        try:
            return AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, **absent)
        except ValueError as exc:  # pipelines outside the text-to-image family, e.g. class-conditional DiTPipeline
            if "AutoPipeline can't find a pipeline" not in str(exc):
                raise
            from diffusers import DiffusionPipeline

            return DiffusionPipeline.from_pretrained(source, dtype=dtype, **absent)
    except (OSError, ValueError) as exc:
        raise LinfuseError(
            f"could not load pipeline {model_id!r} ({type(exc).__name__}: {exc}). For a Hub id this machine needs "
            "network access or a filled Hugging Face cache; otherwise pass a local diffusers pipeline directory."
        ) from exc


def _absent_components(folder: Path) -> dict:
    """Components a local folder saved as absent ([null, null] in model_index.json, e.g. SD3 without its T5):
    diffusers needs them passed as None explicitly."""
    index = folder / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    return {name: None for name, value in entries.items()
            if not name.startswith("_") and isinstance(value, list) and value == [None, None]}
