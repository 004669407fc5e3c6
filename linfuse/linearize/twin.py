"""A model's structure on the meta device, converted like the model: what memory estimates run (no memory, no math)."""

from contextlib import contextmanager

import torch

from .convert import _specs_of
from .grid import attach_token_grid
from .registry import get_method, processor_classes


def meta_twin(module):
    """A config-built copy of a diffusers model on the meta device, in its dtype, with the same linfuse processors.

    Parameters take no memory and operators only compute shapes, so a forward pass at any size costs milliseconds;
    :mod:`linfuse.pipelines.preflight` counts the bytes of the tensors it would allocate.
    """
    with torch.device("meta"):
        twin = type(module).from_config(module.config)
        layers = [(name, m) for name, m in module.named_modules()
                  if isinstance(getattr(m, "processor", None), processor_classes())]
        if layers:
            grid = attach_token_grid(twin)
            for spec, (name, attn) in zip(_specs_of(layers), layers, strict=True):
                processor = get_method(attn.processor.method).build(spec)
                processor.__dict__["_token_grid"] = grid
                twin.get_submodule(name).set_processor(processor)
    if module.dtype != twin.dtype:
        with _quiet_diffusers():
            twin = twin.to(dtype=module.dtype)
    return twin.eval().requires_grad_(False)


@contextmanager
def _quiet_diffusers():
    """Silence diffusers' advice to load in the target dtype (a meta twin has no weights to load)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
