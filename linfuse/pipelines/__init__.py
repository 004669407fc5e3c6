"""diffusers pipelines around linearized models."""

from .batch import read_jobs, run_batch
from .highres import HighResOptions, generate_highres
from .highres_pipeline import LinfuseHighResPipeline
from .loading import LINFUSION_WEIGHTS, load_pipeline
from .offload import component_offload
from .parameters import GenerationParams, parse_size, read_png_parameters, save_png
from .patch_parallel import patch_parallel
from .preflight import InsufficientMemoryError, MemoryEstimate, estimate_memory
from .size_search import largest_fitting_size
from .text2image import describe_run, generate, native_size
from .tiled_vae import tiled_decode, tiled_encode

__all__ = [
    "LINFUSION_WEIGHTS", "GenerationParams", "HighResOptions", "InsufficientMemoryError", "LinfuseHighResPipeline",
    "MemoryEstimate", "component_offload", "describe_run", "estimate_memory", "generate", "generate_highres",
    "largest_fitting_size", "load_pipeline", "native_size", "parse_size", "patch_parallel", "read_jobs",
    "read_png_parameters", "run_batch", "save_png", "tiled_decode", "tiled_encode",
]
