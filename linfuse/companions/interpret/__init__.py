"""Looking inside networks: LinearScope for piecewise-linear (ReLU-family) networks, Grad-CAM for classifiers."""

from .gradcam import grad_cam, last_conv_layer, overlay
from .linearscope import LinearMap, gates_frozen, linear_map, output_row, record_gates, signed_picture

__all__ = ["LinearMap", "gates_frozen", "grad_cam", "last_conv_layer", "linear_map", "output_row", "overlay",
           "record_gates", "signed_picture"]
