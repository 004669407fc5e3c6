"""The bundled SR companions by name: build, save (collapsed) and load them.

Names: ``espcn``, ``sesr-m3``, ``sesr-m5``, ``sesr-m11``, ``sesr-xl``; scales 2 and 4. Weights live in
``assets/sr/<name>-x<scale>.safetensors`` with the training command in the file's metadata. SESR is stored
collapsed (one convolution per linear block), which is all inference needs.
"""

from pathlib import Path

import torch
from safetensors import safe_open

from ...errors import InvalidArgumentError, LinfuseError
from ...fileio import write_safetensors
from .espcn import ESPCN
from .sesr import DEFAULT_EXPANSION, SESR, SESR_SIZES

SR_MODELS = ("espcn",) + tuple(f"sesr-{size}" for size in SESR_SIZES)
SR_SCALES = (2, 4)
ASSETS = Path(__file__).resolve().parents[3] / "assets" / "sr"


def check_model(name: str, scale: int) -> None:
    if name not in SR_MODELS:
        raise InvalidArgumentError(f"model must be one of {', '.join(SR_MODELS)}; got {name!r}")
    if scale not in SR_SCALES:
        raise InvalidArgumentError(f"scale must be one of {', '.join(map(str, SR_SCALES))}; got {scale!r}")


def build_sr(name: str, scale: int, expansion: int = DEFAULT_EXPANSION) -> torch.nn.Module:
    """A fresh single-channel (luma) model in its training form."""
    check_model(name, scale)
    if name == "espcn":
        return ESPCN(scale=scale, channels=1)
    return SESR(size=name.removeprefix("sesr-"), scale=scale, channels=1, expansion=expansion)


def weights_path(name: str, scale: int) -> Path:
    return ASSETS / f"{name}-x{scale}.safetensors"


def inference_form(model: torch.nn.Module) -> torch.nn.Module:
    return model.collapse() if isinstance(model, SESR) else model


def save_sr(model: torch.nn.Module, path, metadata: dict) -> Path:
    """Write the inference form (collapsed for SESR) as safetensors, with ``metadata`` (str → str-able) attached."""
    model = inference_form(model)
    tensors = {key: value.detach().float().contiguous() for key, value in model.state_dict().items()}
    return write_safetensors(path, tensors, metadata)


def load_sr(name: str = "sesr-m5", scale: int = 2, path=None, device="cpu") -> torch.nn.Module:
    """The bundled (or given) weights in inference form, in eval mode."""
    check_model(name, scale)
    path = Path(path) if path else weights_path(name, scale)
    if not path.is_file():
        raise LinfuseError(f"no weights for {name} ×{scale} at {path}; train them with "
                           f"`linfuse train-sr --model {name} --scale {scale}` (see README, 'Super-resolution')")
    model = inference_form(build_sr(name, scale, expansion=1))
    with safe_open(str(path), "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise LinfuseError(f"{path} does not hold {name} ×{scale} weights (mismatched keys: {sorted(missing)[:4]})")
    model.load_state_dict(state)
    return model.to(device).eval()


def read_metadata(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})
