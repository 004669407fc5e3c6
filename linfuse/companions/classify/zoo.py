"""The bundled classifiers by name: ``cnn-svm``, ``mobilenetv2``, ``vae-svm`` (teacher-VAE features + linear SVM).

Weights live in ``assets/classify/<name>.safetensors``; the metadata holds the class names (the emoji glyph names,
in label order) and the training command.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ...errors import InvalidArgumentError, LinfuseError
from ...fileio import write_safetensors
from .cnn_svm import CNNSVM
from .mobilenet_v2 import MobileNetV2
from .vae_features import FeatureSVM, VAEFeatures

CLASSIFIERS = ("cnn-svm", "mobilenetv2", "vae-svm")
ASSETS = Path(__file__).resolve().parents[3] / "assets" / "classify"


def check_name(name: str) -> None:
    if name not in CLASSIFIERS:
        raise InvalidArgumentError(f"classifier must be one of {', '.join(CLASSIFIERS)}; got {name!r}")


def teacher_vae():
    from diffusers import AutoencoderKL

    from ...pipelines.loading import resolve_model

    return AutoencoderKL.from_pretrained(resolve_model("teacher"), subfolder="vae")


def build_classifier(name: str, num_classes: int) -> torch.nn.Module:
    check_name(name)
    if name == "cnn-svm":
        return CNNSVM(num_classes)
    if name == "mobilenetv2":
        return MobileNetV2(num_classes)
    return FeatureSVM(VAEFeatures(teacher_vae()), num_classes)


def weights_path(name: str) -> Path:
    return ASSETS / f"{name}.safetensors"


def _saved_state(model: torch.nn.Module) -> dict:
    state = model.trainable_state() if isinstance(model, FeatureSVM) else model.state_dict()
    return {key: value.detach().float().contiguous() for key, value in state.items()}


def save_classifier(model: torch.nn.Module, path, class_names: list[str], metadata: dict) -> Path:
    return write_safetensors(path, _saved_state(model), {**metadata, "class_names": class_names})


def load_classifier(name: str, path=None, device="cpu") -> tuple[torch.nn.Module, list[str]]:
    """(model in eval mode, class names in label order)."""
    check_name(name)
    path = Path(path) if path else weights_path(name)
    if not path.is_file():
        raise LinfuseError(f"no weights for classifier {name} at {path}; train them with "
                           f"`linfuse train-classifier --model {name}`")
    with safe_open(str(path), "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        class_names = json.loads((handle.metadata() or {})["class_names"])
    model = build_classifier(name, len(class_names))
    result = model.load_state_dict(state, strict=not isinstance(model, FeatureSVM))
    if isinstance(model, FeatureSVM) and result.unexpected_keys:
        raise LinfuseError(f"{path} does not hold {name} weights (unexpected keys {result.unexpected_keys[:4]})")
    return model.to(device).eval(), class_names
