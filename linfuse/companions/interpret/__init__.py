"""Looking inside networks: LinearScope for piecewise-linear (ReLU-family) networks."""

from .linearscope import LinearMap, linear_map, record_gates

__all__ = ["LinearMap", "linear_map", "record_gates"]
