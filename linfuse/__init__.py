"""linfuse: linear- and local-attention conversions of pretrained diffusion models.

``linfuse.linearize`` is the conversion *function*; the subpackage of the same name is reached with
``from linfuse.linearize import ...``. Other top-level names are imported lazily.
"""

import importlib

__version__ = "0.1.0"

from .linearize import (  # noqa: E402  (imported eagerly so the function, not the subpackage, is linfuse.linearize)
    LinearizeReport,
    linearize,
    read_linear_weights,
    save_linear_weights,
    unlinearize,
)

_LAZY = {"load_pipeline": "linfuse.pipelines", "linear_attention": "linfuse.kernels"}

__all__ = [
    "LinearizeReport", "__version__", "linear_attention", "linearize", "load_pipeline", "read_linear_weights",
    "save_linear_weights", "unlinearize",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'linfuse' has no attribute {name!r}")
