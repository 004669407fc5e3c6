"""Attention kernels. Each public function checks its arguments and dispatches to a backend; the plain PyTorch
reference beside it is the CPU path and the ground truth in tests. The Triton paths are PyTorch custom ops
(``torch.ops.linfuse.*``, registered on import), so ``torch.compile(fullgraph=True)`` runs through them; the Triton
modules themselves are imported on first use."""

from .dispatch import BACKENDS
from .feature_maps import FEATURE_MAPS
from .linear_attention import (
    DEFAULT_EPS,
    LAYOUTS,
    linear_attention,
    linear_attention_readout,
    linear_attention_state,
)
from .linear_attention_reference import linear_attention_reference
from .local_attention import WINDOWS, local_attention
from .local_attention_reference import local_attention_chunked, local_attention_dense, local_attention_mask

__all__ = [
    "BACKENDS", "DEFAULT_EPS", "FEATURE_MAPS", "LAYOUTS", "WINDOWS", "linear_attention",
    "linear_attention_readout", "linear_attention_reference", "linear_attention_state",
    "local_attention", "local_attention_chunked", "local_attention_dense",
    "local_attention_mask",
]
