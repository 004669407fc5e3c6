"""Attention kernels. Each public function checks its arguments and dispatches to a backend; the plain PyTorch
reference beside it is the CPU path and the ground truth in tests."""

from .feature_maps import FEATURE_MAPS
from .linear_attention import BACKENDS, DEFAULT_EPS, LAYOUTS, linear_attention
from .linear_attention_reference import linear_attention_reference

__all__ = ["BACKENDS", "DEFAULT_EPS", "FEATURE_MAPS", "LAYOUTS", "linear_attention", "linear_attention_reference"]
