"""Reading and writing linear-attention weights: linfuse's own format and LinFusion's published checkpoints.

linfuse format (a directory)::

    linear_attention.json          {"format": "linfuse-linear-attention", "method", "base_model_class", "layers": [...]}
    linear_attention.safetensors   keys are the UNet's own state-dict keys of every converted layer:
                                   "<layer>.processor.<param>" (mixers) and "<layer>.to_q.weight", … (projections)

LinFusion format (``Yuanshi/LinFusion-1-5``, ``-2-1``, ``-XL``)::

    config.json                         {"_class_name": "LinFusion", "modules_list": [{"module_name", "dim_n",
                                         "heads", "projection_mid_dim"}, …]}
    diffusion_pytorch_model.safetensors keys "<i>.to_q_.<j>.*", "<i>.to_k_.<j>.*", "<i>.to_q.weight", …

CLEAR format (``Huage001/CLEAR``: clear_local_<r>.safetensors, clear_local_<r>_down_<f>.safetensors), one file::

    keys are the FLUX transformer's own parameter names: "<layer>.to_q.weight", …, and
    "<layer>.processor.spatial_weight" (1, 1, 1, f, 1, f, 1) for the pooled variant; r and f come from the file name
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import WeightsError
from ..fileio import atomic_write, looks_like_hub_id
from .layers import LayerSpec

FORMAT_NAME = "linfuse-linear-attention"
FORMAT_VERSION = 1
CONFIG_NAME = "linear_attention.json"
WEIGHTS_NAME = "linear_attention.safetensors"
LINFUSION_CONFIG = "config.json"
LINFUSION_WEIGHTS = "diffusion_pytorch_model.safetensors"
PROJECTION_PREFIXES = ("to_q.", "to_k.", "to_v.", "to_out.")


@dataclass
class LinearCheckpoint:
    """Weights for every converted layer, keyed by the UNet's own state-dict names."""

    source: str
    format: str
    method: str
    base_model_class: str
    layers: list[LayerSpec] | None  # None: every layer the method selects (CLEAR files)
    tensors: dict[str, torch.Tensor]
    options: dict = field(default_factory=dict)  # options of every layer when ``layers`` is None
    extra: dict = field(default_factory=dict)  # the rest of a linfuse config (softmax_layers of hybrids, …)


def resolve_weights_dir(weights: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hugging Face Hub repository id, fetched through huggingface_hub."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsError(f"weights must be a directory holding the config and safetensors files; {path} is a file")
    text = str(weights)
    if not looks_like_hub_id(text):
        raise WeightsError(f"weights directory {path} does not exist; pass a directory or a Hub id like owner/name")
    return _download(text)


def resolve_weights_file(weights: str | os.PathLike) -> Path:
    """A local .safetensors file, or "owner/name/path/file.safetensors" fetched from the Hugging Face Hub."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    parts = str(weights).split("/")
    if len(parts) < 3 or not looks_like_hub_id("/".join(parts[:2])) or Path(weights).is_absolute():
        raise WeightsError(f"weights file {path} does not exist; pass a file or owner/name/file.safetensors")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as exc:  # network errors, missing files, offline mode
        raise WeightsError(
            f"could not fetch {weights!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). If this machine "
            "is offline, download the file elsewhere and pass its local path."
        ) from exc


def _read_clear(path: Path) -> LinearCheckpoint:
    """CLEAR's attention weights for FLUX; the window radius is read from the file name."""
    tensors = _read_tensors(path)
    match = re.search(r"local_(\d+)", path.name)
    pooled = [t for k, t in tensors.items() if k.endswith("processor.spatial_weight")]
    if match is None:
        raise WeightsError(f"cannot tell the window radius of {path.name}: CLEAR files are named "
                           "clear_local_<radius>[_down_<factor>].safetensors; rename the file accordingly")
    options = {"radius": int(match.group(1))}
    if pooled:
        options["pool"] = int(pooled[0].shape[3])
    return LinearCheckpoint(str(path), "clear", "clear", "FluxTransformer2DModel", None, tensors, options)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # network errors, missing repos, offline mode: all end the same way for the user
        raise WeightsError(
            f"could not fetch weights {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline, download the repository elsewhere and pass its local directory."
        ) from exc


def read_linear_weights(weights: str | os.PathLike) -> LinearCheckpoint:
    """Read a linfuse or LinFusion weights directory (or Hub id), or a CLEAR file, validating it before any use."""
    if str(weights).endswith(".safetensors"):
        return _read_clear(resolve_weights_file(weights))
    directory = resolve_weights_dir(weights)
    if (directory / CONFIG_NAME).exists():
        return _read_linfuse(directory)
    if (directory / LINFUSION_CONFIG).exists():
        return _read_linfusion(directory)
    raise WeightsError(
        f"{directory} holds neither {CONFIG_NAME} (linfuse format) nor {LINFUSION_CONFIG} (LinFusion format); "
        "point weights at a directory written by linfuse.save_linear_weights or a LinFusion checkpoint"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); download or save the weights again") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object; download or save the weights again")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; download or save the weights again")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        raise WeightsError(
            f"{path} could not be read as safetensors ({exc}); the file is corrupt or incomplete, "
            "download or save it again"
        ) from exc


def _read_linfuse(directory: Path) -> LinearCheckpoint:
    config = _read_json(directory / CONFIG_NAME)
    if config.get("format") != FORMAT_NAME or not isinstance(config.get("layers"), list):
        raise WeightsError(f"{directory / CONFIG_NAME} is not a linfuse linear-attention config")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(
            f"{directory} was written by a newer linfuse (format {config['format_version']}); upgrade linfuse"
        )
    try:
        layers = [LayerSpec(**layer) for layer in config["layers"]]
    except TypeError as exc:
        raise WeightsError(f"{directory / CONFIG_NAME} has a malformed layer entry ({exc})") from exc
    return LinearCheckpoint(
        source=str(directory),
        format="linfuse",
        method=config.get("method", ""),
        base_model_class=config.get("base_model_class", ""),
        layers=layers,
        tensors=_read_tensors(directory / WEIGHTS_NAME),
        extra={k: v for k, v in config.items() if k not in ("format", "format_version", "method", "layers")},
    )


def _read_linfusion(directory: Path) -> LinearCheckpoint:
    config = _read_json(directory / LINFUSION_CONFIG)
    modules = config.get("modules_list")
    if not isinstance(modules, list):
        raise WeightsError(
            f"{directory / LINFUSION_CONFIG} has no 'modules_list': it is not a LinFusion checkpoint. "
            "Point weights at a LinFusion checkpoint (e.g. Yuanshi/LinFusion-1-5) or a linfuse weights directory"
        )
    try:
        layers = [LayerSpec(m["module_name"], m["dim_n"], m["heads"], m.get("projection_mid_dim")) for m in modules]
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{directory / LINFUSION_CONFIG} has a malformed modules_list entry ({exc})") from exc
    if any(layer.mid_dim is not None and layer.mid_dim < 1 for layer in layers):
        raise WeightsError("LinFusion checkpoints without mixers (projection_mid_dim = -1) are not supported")
    raw = _read_tensors(directory / LINFUSION_WEIGHTS)
    tensors = {}
    for key, value in raw.items():
        index, _, param = key.partition(".")
        if not index.isdigit() or int(index) >= len(layers):
            raise WeightsError(f"{directory / LINFUSION_WEIGHTS} has key {key!r} that matches no modules_list entry")
        owner = "" if param.startswith(PROJECTION_PREFIXES) else "processor."
        tensors[f"{layers[int(index)].name}.{owner}{param}"] = value
    return LinearCheckpoint(str(directory), "linfusion", "linfusion", "UNet2DConditionModel", layers, tensors)


def write_linear_weights(
    directory: str | os.PathLike, *, method: str, base_model_class: str, layers: list[LayerSpec],
    tensors: dict[str, torch.Tensor], extra: dict | None = None,
) -> Path:
    """Write the linfuse format atomically: each file goes to a temporary name first, then is renamed."""
    directory = Path(directory)
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": method,
              "base_model_class": base_model_class, "layers": [layer.to_dict() for layer in layers], **(extra or {})}
    tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT_NAME}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return directory
