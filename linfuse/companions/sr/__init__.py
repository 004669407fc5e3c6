"""Super-resolution companions: ESPCN (sub-pixel convolution) and SESR (collapsible linear blocks)."""

from .espcn import ESPCN
from .sesr import SESR, SESR_SIZES, CollapsibleLinearBlock

__all__ = ["ESPCN", "SESR", "SESR_SIZES", "CollapsibleLinearBlock"]
