"""NTK-scaled RoPE for FLUX-style transformers at resolutions beyond their training one (CLEAR's high-res recipe).

A rotary embedding turns position p into angles p·θ^(−2i/D) for i < D/2 on every axis. Beyond the training
resolution the low frequencies rotate past angles never seen; NTK scaling raises the base, θ' = θ·α (α = the
``ntk_factor``, 10 in CLEAR's high-resolution notebook), so that the same positions turn more slowly — what
diffusers' ``get_1d_rotary_pos_embed(…, ntk_factor=α)`` computes. ``with ntk_scaled_rope(transformer, α): …`` sets
the base of the transformer's ``FluxPosEmbed`` and restores it after; nothing else changes.
"""

import math
from contextlib import contextmanager

from ..errors import InvalidArgumentError


def rope_module(transformer):
    """The transformer's rotary position embedding (``pos_embed`` with a ``theta``), or an error saying there is
    none (SD3 and PixArt add learned or sin-cos positions instead)."""
    embed = getattr(transformer, "pos_embed", None)
    if embed is None or not hasattr(embed, "theta") or not hasattr(embed, "axes_dim"):
        raise InvalidArgumentError(f"{type(transformer).__name__} has no rotary position embedding to scale; NTK "
                                   "scaling applies to FLUX-style transformers")
    return embed


def check_ntk_factor(factor) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise InvalidArgumentError(f"ntk_factor must be a finite number > 0 (1 = off; CLEAR uses 10); got {factor!r}")
    return float(factor)


@contextmanager
def ntk_scaled_rope(transformer, ntk_factor: float):
    """Run the block with the RoPE base θ multiplied by ``ntk_factor``; the base is restored afterwards."""
    factor = check_ntk_factor(ntk_factor)
    embed = rope_module(transformer)
    base = embed.theta
    embed.theta = base * factor
    try:
        yield transformer
    finally:
        embed.theta = base
