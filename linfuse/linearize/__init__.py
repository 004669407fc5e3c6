"""Conversion of pretrained diffusion-model attention to linear attention."""

from .clear import ClearAttnProcessor
from .convert import (
    LinearizeReport,
    linearize,
    linearized_layers,
    save_linear_weights,
    trainable_parameters,
    unlinearize,
)
from .layers import LayerSpec, describe_architecture, self_attention_layers
from .linfusion import LinFusionAttnProcessor, ResidualMixer
from .lit import LiTAttnProcessor
from .registry import METHODS, get_method, method_names
from .weights import read_linear_weights

__all__ = [
    "METHODS", "ClearAttnProcessor", "LayerSpec", "LiTAttnProcessor", "LinFusionAttnProcessor", "LinearizeReport",
    "ResidualMixer", "describe_architecture", "get_method", "linearize", "linearized_layers", "method_names",
    "read_linear_weights", "save_linear_weights", "self_attention_layers", "trainable_parameters", "unlinearize",
]
