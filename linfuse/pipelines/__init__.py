"""diffusers pipelines around linearized models."""

from .loading import LINFUSION_WEIGHTS, load_pipeline
from .parameters import GenerationParams, parse_size, read_png_parameters, save_png
from .text2image import describe_run, generate, native_size

__all__ = [
    "LINFUSION_WEIGHTS", "GenerationParams", "describe_run", "generate", "load_pipeline", "native_size",
    "parse_size", "read_png_parameters", "save_png",
]
