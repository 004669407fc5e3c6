"""The largest size that fits: the candidate sizes of an aspect ratio and the search among them.

Fitting is monotone in size (each denoiser setting needs no less at a larger latent, and auto takes the first that
fits), so the search keeps the last size known to fit and the first known not to and probes between them
(:func:`last_fitting`), guided by how full the probed jobs are (:func:`load_of`). :func:`largest_fitting_size` is
what generate, img2img, the high-res stages and the UI refuse with; the planner (``linfuse estimate``) runs the same
:class:`SizeSearch` on its configs' memory model, so the two give one answer.
"""

from math import gcd, lcm

from ..linearize.layers import resolve_denoiser
from .families import size_multiple
from .offload import execution_device
from .plan import Stage, default_strengths, plan_stages
from .preflight import INDEX_LIMIT, SAFETY, MemoryEstimate, estimate_memory, free_memory, memory_model_for

GUIDED_PROBES = 6  # secant probes of the largest-fit search before it bisects (last_fitting)


def candidate_sizes(width: int, height: int, multiple: int = 8) -> list[tuple[int, int]]:
    """Sizes up to W×H, multiples of 8 and of ``multiple`` (the model's), small to large: of exactly W:H when that
    leaves at least 8 sizes to choose from, else of W:H to within that rounding."""
    multiple = lcm(8, multiple)  # every planned size is a multiple of 8 (plan_stages)
    divisor = gcd(width, height)
    unit_w, unit_h = width // divisor, height // divisor
    exact = [(m * unit_w, m * unit_h) for m in range(1, divisor + 1)
             if (m * unit_w) % multiple == 0 and (m * unit_h) % multiple == 0]
    if len(exact) >= 8:
        return exact
    longer, step = max(width, height), multiple
    sizes = {(max(step, width * side // longer // step * step), max(step, height * side // longer // step * step))
             for side in range(step, longer + 1, step)}
    return sorted(sizes)


def largest_fitting_size(pipe, width: int, height: int, *, native_side: int, strengths=None,
                         progressive: bool = True, fits_now: bool | None = None,
                         requested: MemoryEstimate | None = None, **kwargs) -> tuple[int, int] | None:
    """The largest size of W:H (see :func:`candidate_sizes`) whose job fits; None if not even the smallest does.
    ``progressive``: the job is the progressive stages (else one stage at the size); ``fits_now``: whether W×H
    itself fits, when the caller knows (the search then looks only above or below it); ``requested``: W×H's
    estimate, when the caller has it (it guides the search: :func:`last_fitting`, and without a ``limit`` every
    size is compared with the free memory it was); ``kwargs`` as :func:`estimate_memory` takes them."""
    model = kwargs.pop("model", None) or memory_model_for(pipe)
    multiple = size_multiple(pipe)
    if requested is not None:
        fits_now = requested.fits
    if kwargs.get("limit") is None and kwargs.get("free") is None:  # every size against one reading
        kwargs["free"] = (requested.free_device, requested.free_host) if requested is not None else \
            free_memory(execution_device(resolve_denoiser(pipe)))
    sizes = sizes_beside(candidate_sizes(width, height, multiple), width, height, fits_now)
    if not sizes:
        return None

    def stages_of(size: tuple[int, int]) -> list[Stage]:
        w, h = size
        if not progressive:
            return [Stage(w, h, 1.0)]
        count = len(plan_stages(w, h, native_side, multiple=multiple)) - 1
        schedule = None if strengths is None else _resample(list(strengths), count)
        return plan_stages(w, h, native_side, schedule, multiple=multiple)

    search = SizeSearch(lambda stages: estimate_memory(pipe, stages, model=model, **kwargs), stages_of,
                        whole=kwargs.get("upscale") == "pixel")
    return search.largest(sizes, [((width, height), requested.fits, load_of(requested))] if requested else [])


class SizeSearch:
    """The largest size whose job fits, for :func:`last_fitting`: ``estimate(stages)`` is a MemoryEstimate,
    ``stages_of(size)`` a size's job.

    A job is decided by its largest denoising stage (with the final decode): each UNet setting needs no less at a
    larger latent, so when the largest stage fits with some setting, every earlier (smaller) stage fits with the
    same one or a cheaper one, and auto picks the first that fits. :meth:`largest` thus searches by the largest
    stage alone (one stage to trace per probe). With ``whole`` (pixel up-scaling, whose VAE stages between the
    denoising ones may be larger) it then estimates the whole job at the size found and, when that does not fit,
    searches on below it with whole jobs. ``load(size)`` is the load of the last estimate of ``size``."""

    def __init__(self, estimate, stages_of, whole: bool = False):
        self.estimate, self.stages_of, self.whole = estimate, stages_of, whole
        self.loads: dict[tuple[int, int], float] = {}

    def largest(self, sizes: list[tuple[int, int]], anchors=()) -> tuple[int, int] | None:
        best = last_fitting(sizes, self.stage_fits, self.load, anchors)
        if best is None or not self.whole or self.job_fits(best):
            return best
        below = sizes[:sizes.index(best)]
        if not below:
            return None
        return last_fitting(below, self.job_fits, self.load, [*anchors, (best, False, self.loads[best])])

    def stage_fits(self, size: tuple[int, int]) -> bool:
        return self._fits(size, self.stages_of(size)[-1:])

    def job_fits(self, size: tuple[int, int]) -> bool:
        stages = self.stages_of(size)
        return self._fits(size, stages[-1:]) and self._fits(size, stages)

    def load(self, size: tuple[int, int]) -> float:
        return self.loads[size]

    def _fits(self, size: tuple[int, int], stages: list[Stage]) -> bool:
        estimate = self.estimate(stages)
        self.loads[size] = load_of(estimate)
        return estimate.fits


def sizes_beside(sizes: list[tuple[int, int]], width: int, height: int,
                 fits_now: bool | None) -> list[tuple[int, int]]:
    """``sizes`` (small to large) that may hold the largest fit when W×H ``fits_now`` (the sizes from W×H up) or
    does not (those below it); all of them when unknown. Fitting is monotone in size."""
    if fits_now is None:
        return sizes
    area = width * height
    return [s for s in sizes if (s[0] * s[1] >= area if fits_now else s[0] * s[1] < area)]


def load_of(estimate: MemoryEstimate) -> tuple[str, float]:
    """How full a job is, for the largest-fit search: (the denoiser's mode at its last stage, the largest of its
    device peak over what it may use, its host peak likewise and its largest tensor over 2^31). The job fits when
    the figure is at most 1 (the tensor: below 1); figures of one mode grow with the size."""
    parts = [estimate.max_elements / INDEX_LIMIT]
    if estimate.free_device is not None:
        parts.append(estimate.peak_device / max(1, SAFETY * estimate.free_device))
    if not estimate.shared and estimate.free_host is not None:
        parts.append(estimate.peak_host / max(1, SAFETY * estimate.free_host))
    modes = estimate.modes
    return (modes[-1] if modes else "", max(parts))


def last_fitting(sizes: list[tuple[int, int]], fits, load=None, anchors=()) -> tuple[int, int] | None:
    """The last of ``sizes`` (small to large) for which ``fits(size)``; None if not even the first fits.

    Fitting is monotone in size: the search keeps the last size known to fit and the first known not to, and
    probes between them until they are neighbours. Unless a size above them is known not to fit, the largest is
    tried first (when it fits, that is one estimate), then the smallest, then by bisection. ``anchors``:
    (size, fits, load) of sizes already estimated (the requested job), which bound the search as probes would.

    ``load(size)``: (kind, figure) of a probed size, the figure at most 1 where it fits and growing with the size
    among sizes of one kind (:func:`load_of`: the kind is the denoiser's mode, whose peak grows almost linearly
    with the area, plus the constant of its fixed-size bands); read after ``fits(size)``, from the same traces.
    With it a probe is where the line through the two points nearest to a figure of 1 of the kind that stops
    fitting (or one and the origin) reaches 1 (the secant method), kept inside the bracket: when the line is right,
    that probe and its neighbour end the search. After ``GUIDED_PROBES`` such probes it bisects (at most that many
    probes more than bisection alone). The answer is the same with or without ``load``; only the number of probes
    differs."""
    areas = [width * height for width, height in sizes]
    count = len(sizes)
    known: list[tuple[int, bool, tuple | None]] = []  # (area, fits, (kind, figure)) of every size estimated
    low, high = -1, count  # sizes[: low + 1] fit, sizes[high:] do not

    def learn(area: int, ok: bool, figure: tuple | None) -> bool:
        nonlocal low, high
        known.append((area, ok, figure))
        if ok:
            low = max([low] + [index for index in range(count) if areas[index] <= area])
        else:
            high = min([high] + [index for index in range(count) if areas[index] >= area])
        return ok

    def probe(index: int) -> bool:
        ok = fits(sizes[index])
        return learn(areas[index], ok, load(sizes[index]) if load is not None else None)

    for (width, height), ok, figure in anchors:
        learn(width * height, ok, figure)
    if low == count - 1 or (all(ok for _, ok, _ in known) and probe(count - 1)):
        return sizes[-1]
    if low == -1 and (high == 0 or not probe(0)):
        return None
    guided = 0
    while high - low > 1:
        index = _secant(areas, known, low, high) if guided < GUIDED_PROBES else None
        guided += index is not None
        probe((low + high) // 2 if index is None else index)
    return sizes[low]


def _secant(areas: list[int], known: list, low: int, high: int) -> int | None:
    """The index in (low, high) of the last area at which a line is at most 1: through the two points nearest to a
    figure of 1 (at least 2 % apart in area) of the kind of the smallest size known not to fit (its last, most
    frugal setting: the one that decides where sizes stop fitting), or through one and the origin; None without
    loads, or when the line does not rise."""
    failing = [(area, figure) for area, ok, figure in known if not ok and figure is not None]
    if not failing:
        return None
    kind = min(failing)[1][0]
    points = sorted((abs(figure[1] - 1), area, figure[1]) for area, _, figure in known
                    if figure is not None and figure[0] == kind)
    _, area_one, load_one = points[0]
    area_two, load_two = next(((a, f) for _, a, f in points[1:] if abs(a - area_one) >= 0.02 * area_one), (0, 0.0))
    if (load_two - load_one) * (area_two - area_one) <= 0:
        return None
    target = area_one + (1 - load_one) * (area_two - area_one) / (load_two - load_one)
    below = [index for index in range(low + 1, high) if areas[index] <= target]
    return min(max(below[-1] if below else low + 1, low + 1), high - 1)


def _resample(strengths: list[float], count: int) -> list[float]:
    """A schedule of ``count`` values from the first to the last of ``strengths``."""
    return default_strengths(count, strengths[0], strengths[-1]) if strengths else []
