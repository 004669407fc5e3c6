"""What every tab of the web UI shares: the app's settings, the model cache, and the gallery with its history."""

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .models import ModelCache


@dataclass
class AppSettings:
    """Server-side choices made when the app starts (``python app.py --help``), not per request."""

    outdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="linfuse-ui-")))
    device: str | None = None  # default: CUDA when available
    dtype: str | None = None  # default: fp16 on CUDA, fp32 on the CPU
    weights: str = "default"  # linear-attention weights: see app.py --weights
    max_models: int = 2  # pipelines kept loaded
    memory_limit: int | None = None  # bytes a job may use (preflight); default: what is free
    memory_mode: str = "auto"  # how the UNet runs in Generate and Img2Img (High-res has its own control)
    history: int = 48  # images kept in a session's gallery


@dataclass
class UIContext:
    """Handed to each tab's ``build(ctx)``: tabs add their events against these shared parts."""

    settings: AppSettings
    models: ModelCache
    blocks: object = None  # the gr.Blocks being built (for its load event)
    history: object = None  # gr.State: [(png path, caption), …], newest first
    gallery: object = None  # gr.Gallery showing the history (rendered below the tabs)
    denoiser: threading.Lock = field(default_factory=threading.Lock)  # one request at a time runs a model (jobs)

    @classmethod
    def create(cls, settings: AppSettings) -> "UIContext":
        settings.outdir = Path(settings.outdir).expanduser().resolve()
        settings.outdir.mkdir(parents=True, exist_ok=True)
        models = ModelCache(weights=settings.weights, device=settings.device, dtype=settings.dtype,
                            capacity=settings.max_models)
        return cls(settings, models)
