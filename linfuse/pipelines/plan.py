"""The stages of a progressive high-resolution generation: a base image, then ×2 refinements at falling strength.

For a target W×H and a model whose native side is S (its UNet's sample size × the VAE factor), the sizes are
W×H, W/2×H/2, … halved until the longer side is at most S (each rounded to a multiple of 8), taken from small to
large. The first is generated from text; each later one upscales the previous ×2 and re-denoises it with strength
s_k (SDEdit): the last ``round(steps·s_k)`` of ``steps`` steps. LinFusion's default schedule runs s from 0.4 at the
first refinement down to 0.1 at the last, evenly spaced.
"""

from dataclasses import dataclass

from ..errors import InvalidArgumentError

MAX_SIDE = 16384
DEFAULT_STRENGTHS = (0.4, 0.1)  # first and last refinement; evenly spaced between


@dataclass(frozen=True)
class Stage:
    width: int
    height: int
    strength: float  # 1.0 for the base stage (generated from text)

    @property
    def is_base(self) -> bool:
        return self.strength >= 1.0


def _round8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def stage_sizes(width: int, height: int, native_side: int) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) > native_side:
        w, h = sizes[-1]
        sizes.append((_round8(w / 2), _round8(h / 2)))
    return sizes[::-1]


def default_strengths(count: int, first: float = DEFAULT_STRENGTHS[0], last: float = DEFAULT_STRENGTHS[1]):
    if count <= 0:
        return []
    if count == 1:
        return [first]
    return [round(first + (last - first) * i / (count - 1), 4) for i in range(count)]


def plan_stages(width: int, height: int, native_side: int, strengths=None) -> list[Stage]:
    """The stages for a W×H image (see the module docstring); ``strengths`` overrides the refinement schedule."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= MAX_SIDE or value % 8:
            raise InvalidArgumentError(f"{name} must be a multiple of 8 from 8 to {MAX_SIDE}; got {value!r}")
    sizes = stage_sizes(width, height, native_side)
    refinements = len(sizes) - 1
    if strengths is None:
        strengths = default_strengths(refinements)
    strengths = list(strengths)
    if len(strengths) != refinements:
        raise InvalidArgumentError(f"strengths must give {refinements} values (one per ×2 refinement from "
                                   f"{sizes[0][0]}x{sizes[0][1]} to {width}x{height}); got {len(strengths)}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1 for s in strengths):
        raise InvalidArgumentError(f"strengths must lie in (0, 1); got {strengths}")
    base = Stage(*sizes[0], 1.0)
    return [base] + [Stage(w, h, float(s)) for (w, h), s in zip(sizes[1:], strengths, strict=True)]
