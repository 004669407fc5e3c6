"""The stages of a progressive high-resolution generation: a base image, then ×2 refinements at falling strength.

For a target W×H and a model whose native side is S (its UNet's sample size × the VAE factor), the sizes are
W×H, W/2×H/2, … halved until the longer side is at most S (each rounded to a multiple of 8), taken from small to
large. The first is generated from text; each later one upscales the previous ×2 and re-denoises it with strength
s_k (SDEdit): the last ``int(steps·s_k)`` of ``steps`` steps, as diffusers' img2img counts them. LinFusion's default
schedule runs s from 0.4 at the first refinement down to 0.1 at the last, evenly spaced. Every refinement must run
at least one step (:func:`check_refinement_steps`); with none, diffusers fails deep inside its sampler.
"""

import math
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from .parameters import check_side

DEFAULT_STRENGTHS = (0.4, 0.1)  # first and last refinement; evenly spaced between


@dataclass(frozen=True)
class Stage:
    width: int
    height: int
    strength: float  # 1.0 for the base stage (generated from text)
    lean: object = None  # the UNet's LeanSettings at this stage (None: plain), as the memory preflight chose

    @property
    def is_base(self) -> bool:
        return self.strength >= 1.0


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def stage_sizes(width: int, height: int, native_side: int, multiple: int = 8) -> list[tuple[int, int]]:
    """W×H, then halved (rounded to ``multiple``: the model's size multiple, FLUX 16) until within the native side."""
    sizes = [(width, height)]
    while max(sizes[-1]) > native_side:
        w, h = sizes[-1]
        sizes.append((_round_to(w / 2, multiple), _round_to(h / 2, multiple)))
    return sizes[::-1]


def default_strengths(count: int, first: float = DEFAULT_STRENGTHS[0], last: float = DEFAULT_STRENGTHS[1]):
    if count <= 0:
        return []
    if count == 1:
        return [first]
    return [round(first + (last - first) * i / (count - 1), 4) for i in range(count)]


def plan_stages(width: int, height: int, native_side: int, strengths=None, *, multiple: int = 8) -> list[Stage]:
    """The stages for a W×H image (see the module docstring); ``strengths`` overrides the refinement schedule, and
    the stages' sides are multiples of ``multiple``."""
    check_side("width", width)
    check_side("height", height)
    sizes = stage_sizes(width, height, native_side, multiple)
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


def denoising_steps(steps: int, strength: float) -> int:
    """The steps diffusers' img2img runs at ``strength`` out of a ``steps``-step schedule: int(steps × strength)."""
    return int(steps * strength)


def minimum_steps(strength: float) -> int:
    """The fewest steps for which ``strength`` (in (0, 1]) runs at least one denoising step."""
    steps = max(1, math.ceil(1 / strength))
    while denoising_steps(steps, strength) < 1:  # float rounding: e.g. 3 × (1/3) may fall just below 1
        steps += 1
    return steps


def check_refinement_steps(steps: int, stages: list[Stage]) -> None:
    """Refuse a progressive job one of whose refinements would run no denoising step (diffusers then fails with
    "cannot reshape tensor of 0 elements"). The weakest strength decides: ``steps`` that suffice for it suffice for
    every stage."""
    refinements = [stage for stage in stages if not stage.is_base]
    if not refinements:
        return
    weakest = min(refinements, key=lambda stage: stage.strength)
    if denoising_steps(steps, weakest.strength) >= 1:
        return
    raise InvalidArgumentError(
        f"steps must be at least {minimum_steps(weakest.strength)} for this progressive job: the refinement to "
        f"{weakest.width}x{weakest.height} runs int(steps × strength) = int({steps} × {weakest.strength:g}) = 0 "
        "denoising steps; raise steps or that strength")


def is_progressive(width: int, height: int, native_side: int) -> bool:
    """What generation does unless told (``--highres auto``, the Generate tab): progressive above twice the native
    side, one text-to-image stage up to it."""
    return max(width, height) > 2 * native_side


def job_stages(width: int, height: int, native_side: int, *, progressive: bool | None = None,
               strengths=None, multiple: int = 8) -> list[Stage]:
    """The stages of one image: the progressive ones (``progressive=None``: as :func:`is_progressive` decides), or
    a single text-to-image stage."""
    if progressive is None:
        progressive = is_progressive(width, height, native_side)
    if not progressive:
        return [Stage(width, height, 1.0)]
    return plan_stages(width, height, native_side, strengths, multiple=multiple)
