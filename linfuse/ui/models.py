"""Loaded pipelines for the web UI, cached by (model, method, weights, device, dtype).

Loading the bundled student takes seconds and a Stable Diffusion checkpoint much longer, so every tab asks this
cache. It keeps the ``capacity`` most recently used pipelines (each with its memory-preflight model, built on first
use); loading happens under a lock, so two requests for the same model load it once.
"""

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..linearize import get_method
from ..pipelines import load_pipeline, native_size
from ..pipelines.loading import auto_method, resolve_device, resolve_dtype, resolve_model, resolve_weights
from ..pipelines.preflight import MemoryModel, memory_model_for


@dataclass(frozen=True)
class ModelKey:
    model: str  # as the user named it: 'student', 'teacher', a folder or a Hub id
    method: str | None  # None: softmax attention kept
    weights: str | None  # resolved linear-attention weights (folder or Hub id), None: teacher projections
    device: str
    dtype: str

    def describe(self) -> str:
        if self.method is None:
            attention = "softmax attention"
        elif self.weights:
            attention = f"{self.method}, weights {self.weights}"
        else:
            attention = f"{self.method} from the teacher's projections, not distilled"
        return f"{self.model} ({attention}; {self.device}, {self.dtype})"


@dataclass
class LoadedModel:
    key: ModelKey
    pipe: object

    @property
    def native_side(self) -> int:
        """The longer side of the pipeline's training resolution (64 for the bundled models)."""
        return max(native_size(self.pipe))

    def memory_model(self) -> MemoryModel:
        """The meta-device twin that the memory preflight traces (the pipelines' own, built once per pipeline)."""
        return memory_model_for(self.pipe)


class ModelCache:
    """Pipelines by :class:`ModelKey`, least recently used dropped beyond ``capacity``."""

    def __init__(self, *, weights: str = "default", device=None, dtype=None, capacity: int = 2):
        self.weights = weights
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.capacity = max(1, int(capacity))
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, model: str, method: str) -> ModelKey:
        """Resolve 'auto' (none for the bundled teachers, else the family's own: linfusion for UNets, clear for
        FLUX/SD3/PixArt) and the weights, without loading."""
        if method == "auto":
            method = auto_method(model)
        if method != "none":
            get_method(method)  # an unknown name fails here with the list of known ones
        chosen = None if method == "none" else method
        weights = resolve_weights(self.weights, resolve_model(model)) if chosen else None
        dtype = str(self.dtype).removeprefix("torch.")
        return ModelKey(str(model), chosen, None if weights is None else str(weights), str(self.device), dtype)

    def get(self, model: str, method: str) -> LoadedModel:
        key = self.key(model, method)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.capacity:  # make room first: the peak holds `capacity` models
                self._models.popitem(last=False)
                _release_memory()
            pipe = load_pipeline(resolve_model(key.model), method=key.method, weights=key.weights,
                                 device=self.device, dtype=self.dtype)
            self._models[key] = LoadedModel(key, pipe)
            return self._models[key]

    def loaded(self) -> list[ModelKey]:
        with self._lock:
            return list(self._models)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
