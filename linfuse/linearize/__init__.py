"""Conversion of pretrained diffusion-model attention to linear attention."""

from .convert import LinearizeReport, linearize, linearized_layers, save_linear_weights, unlinearize
from .layers import LayerSpec, describe_architecture, self_attention_layers
from .linfusion import LinFusionAttnProcessor, ResidualMixer
from .registry import METHODS, get_method
from .weights import read_linear_weights

__all__ = [
    "METHODS", "LayerSpec", "LinFusionAttnProcessor", "LinearizeReport", "ResidualMixer", "describe_architecture",
    "get_method", "linearize", "linearized_layers", "read_linear_weights", "save_linear_weights",
    "self_attention_layers", "unlinearize",
]
