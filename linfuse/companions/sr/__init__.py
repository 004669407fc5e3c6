"""Super-resolution companions: ESPCN (sub-pixel convolution) and SESR (collapsible linear blocks), bundled weights,
tiled whole-picture upscaling."""

from .espcn import ESPCN
from .sesr import SESR, SESR_SIZES, CollapsibleLinearBlock
from .tiled import upscale_image, upscale_luma
from .zoo import SR_MODELS, SR_SCALES, build_sr, load_sr, save_sr

__all__ = ["ESPCN", "SESR", "SESR_SIZES", "SR_MODELS", "SR_SCALES", "CollapsibleLinearBlock", "build_sr", "load_sr",
           "save_sr", "upscale_image", "upscale_luma"]
