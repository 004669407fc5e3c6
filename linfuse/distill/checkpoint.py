"""Training checkpoints in safetensors: module weights, optimizer state, step and RNG, written atomically.

Layout of ``OUTPUT/checkpoints/step-000120/``:
  ``weights.safetensors``   the state of every checkpointed module, keys ``<module>.<state-dict key>``
  ``optimizer.safetensors`` per-parameter optimizer tensors, keys ``<param index>.<name>`` (e.g. ``3.exp_avg``)
  ``state.json``            step, optimizer param groups, Python/NumPy RNG states, anything the trainer adds
A checkpoint directory is complete or absent: it is written under a temporary name and renamed at the end.
"""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import WeightsError

PREFIX = "step-"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def _contiguous_cpu(tensors: dict) -> dict:
    """CPU copies safetensors accepts: a tensor sharing storage with an earlier one (tied weights, e.g. T5's
    ``shared`` and ``embed_tokens``) is cloned, since safetensors refuses shared memory."""
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def save_checkpoint(root: Path, step: int, modules: dict, optimizer: torch.optim.Optimizer, extra: dict,
                    keep: int) -> Path:
    """Write checkpoint ``step`` and delete all but the newest ``keep`` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    temporary = root / f".{final.name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    weights = {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}
    save_file(_contiguous_cpu(weights), temporary / "weights.safetensors")
    optimizer_state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
               for index, state in optimizer_state["state"].items() for name, value in state.items()}
    save_file(_contiguous_cpu(tensors), temporary / "optimizer.safetensors")
    state = {
        "step": step,
        "param_groups": optimizer_state["param_groups"],
        "python_random": _jsonable(random.getstate()),
        "numpy_random": _jsonable(np.random.get_state()),
        "torch_random": torch.get_rng_state().tolist(),
        **extra,
    }
    (temporary / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    temporary.rename(final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, modules: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Restore modules, optimizer and RNG from ``path``; returns the state dict (``step`` and extras)."""
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "weights.safetensors")
        optimizer_tensors = load_file(path / "optimizer.safetensors")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"checkpoint {path} is unreadable ({exc}); delete it to resume from the one before") from exc
    for name, module in modules.items():
        prefix = f"{name}."
        own = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise WeightsError(f"checkpoint {path} does not match module {name!r}: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}; was it written by a run with another config?")
    per_param = {}
    for key, value in optimizer_tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    random.setstate(_python_state(state["python_random"]))
    np.random.set_state(tuple(state["numpy_random"]))
    torch.set_rng_state(torch.tensor(state["torch_random"], dtype=torch.uint8))
    return state


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _python_state(value):
    version, internal, gauss = value
    return version, tuple(internal), gauss
