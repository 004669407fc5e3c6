"""The companion networks of the Upscale and Inspect tabs (SR models, classifiers), loaded on first use and kept
while their weight files are unchanged (they are small; a file retrained meanwhile is loaded again).

The models are shared between requests and LinearScope / Grad-CAM hook into them (LinearScope also switches them to
float64 for a moment), so every event using them runs in one concurrency group, :data:`CONCURRENCY`.
"""

import threading
from collections import OrderedDict
from pathlib import Path

from ..companions.classify import load_classifier
from ..companions.classify.zoo import weights_path as classifier_path
from ..companions.sr import load_sr
from ..companions.sr.zoo import weights_path as sr_path

CONCURRENCY = {"concurrency_id": "companions", "concurrency_limit": 1}
CAPACITY = 6

_models: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _cached(key: tuple, path: Path, load):
    stamp = _stamp(path)
    if stamp is None:
        return load()  # raises the loader's own message (which command trains the missing weights)
    key = (*key, stamp)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        model = load()
        _models[key] = model
        while len(_models) > CAPACITY:
            _models.popitem(last=False)
        return model


def sr_model(name: str, scale: int, device="cpu"):
    """The bundled SR companion ``name`` ×``scale`` (inference form, eval mode)."""
    return _cached(("sr", name, scale, str(device)), sr_path(name, scale),
                   lambda: load_sr(name, scale, device=device))


def classifier(name: str):
    """(model, class names) of the bundled classifier ``name`` on the CPU."""
    return _cached(("classify", name), classifier_path(name), lambda: load_classifier(name))
