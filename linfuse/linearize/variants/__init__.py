"""Linear-attention variants from the literature, for UNet self-attention (``linearize(..., method=NAME)``).

Each is a :class:`~linfuse.linearize.processor.SelfAttentionProcessor` over the layer's own q/k/v/out projections;
the module of each states its formula. New branches start at zero (gates at identity), so that a converted layer
starts as the variant's kernelised attention and distillation trains the projections and the new parameters.
"""

from .inline import InLineAttnProcessor
from .l2vit import L2ViTAttnProcessor
from .nalaformer import NaLaFormerAttnProcessor
from .rala import RalaAttnProcessor
from .sana import SanaAttnProcessor
from .slab import SlabAttnProcessor
from .transnormer import TransNormerAttnProcessor

VARIANTS: list[tuple[str, type, str]] = [  # (name, processor class, one-line summary)
    ("sana", SanaAttnProcessor, "Sana: ReLU features, normalised linear attention, no new parameters"),
    ("slab", SlabAttnProcessor,
     "SLAB: ReLU normalised linear attention plus a 5×5 depth-wise convolution of V shared by the heads"),
    ("inline", InLineAttnProcessor,
     "InLine: injective linear attention (identity kernel, rows sum to 1) plus a per-sample dynamic 3×3 "
     "depth-wise convolution of V"),
    ("rala", RalaAttnProcessor,
     "RALA: ELU+1 linear attention with query-conditioned softmax key re-weighting, a 5×5 LePE on V and an "
     "output gate"),
    ("nalaformer", NaLaFormerAttnProcessor,
     "NaLaFormer: norm-aware power features of signed q/k halves, normalised linear attention, a 5×5 LePE on V"),
    ("l2vit", L2ViTAttnProcessor,
     "L²ViT: ReLU linear attention with per-head temperature and a floored normaliser, plus a 7×7 local "
     "concentration module"),
    ("transnormer", TransNormerAttnProcessor,
     "TransNormer: ELU+1 linear attention without a denominator, per-head RMSNorm of the output with a gain"),
]

__all__ = [
    "VARIANTS", "InLineAttnProcessor", "L2ViTAttnProcessor", "NaLaFormerAttnProcessor", "RalaAttnProcessor",
    "SanaAttnProcessor", "SlabAttnProcessor", "TransNormerAttnProcessor",
]
