"""The largest-fit search (size_search.last_fitting, SizeSearch): the answer of a bisection over whole jobs, in a few
probes (issue 24, build 5)."""

import math

import pytest

from linfuse.pipelines.plan import plan_stages
from linfuse.pipelines.preflight import MemoryModel, estimate_memory, memory_model_for
from linfuse.pipelines.size_search import (
    GUIDED_PROBES,
    candidate_sizes,
    largest_fitting_size,
    last_fitting,
    sizes_beside,
)

SIZES = [(side, side) for side in range(8, 16385, 8)]


class Counted:
    """fits and load of a made-up job whose load is ``load(area)``; counts the probes."""

    def __init__(self, load):
        self.figure, self.probes = load, []

    def fits(self, size):
        self.probes.append(size)
        return self.figure(size[0] * size[1]) <= 1

    def load(self, size):
        return "lean", self.figure(size[0] * size[1])


def brute(sizes, job: Counted):
    fitting = [s for s in sizes if job.figure(s[0] * s[1]) <= 1]
    return fitting[-1] if fitting else None


@pytest.mark.parametrize("limit", [0.3, 7.7, 60.0, 155.5, 268.5, 1000.0])
def test_a_guided_search_finds_the_bisections_size_in_a_few_probes(limit):
    """Loads as a lean stage's: a constant (fixed-size bands) plus a part linear in the area, or bent; the answer
    is the bisection's, and when the line is near the truth, the search takes a few probes where the
    bisection takes about log2(2048) + 2 = 13."""
    area = 16384**2
    for figure, most in [(lambda a: (2.4 + 20 * a / area) / limit, 4),
                         (lambda a: (2.4 + 20 * (a / area) ** 1.3) / limit, 8),
                         (lambda a: (0.5 + 20 * math.sqrt(a / area) + (a > area / 3)) / limit,
                          GUIDED_PROBES + 13)]:
        guided, plain = Counted(figure), Counted(figure)
        answer = last_fitting(SIZES, guided.fits, guided.load)
        assert answer == last_fitting(SIZES, plain.fits) == brute(SIZES, guided)
        assert len(guided.probes) <= most and len(plain.probes) >= 12 or answer in (None, SIZES[-1])
        # the requested size (above the list) known not to fit: neither end of the list is probed first
        requested = Counted(figure)
        above = [((16392, 16392), False, ("lean", figure(16392**2)))]
        assert last_fitting(SIZES, requested.fits, requested.load, above) == answer
        if answer not in (None, SIZES[-1]):
            assert SIZES[-1] not in requested.probes and len(requested.probes) <= most


def test_a_job_is_searched_by_its_largest_stage_and_finds_the_last_size_whose_whole_job_fits(student):
    """The preflight's search of the bundled student under a cap (the answer runs the floor rung): every stage
    of the job it finds fits, and not every stage of the next size's; and a fresh model's estimates (no setting
    passed over for having failed at a smaller latent) equal the searched model's."""
    model = memory_model_for(student)
    sizes = sizes_beside(candidate_sizes(4096, 4096), 4096, 4096, False)
    for cap_mib in (300,):
        options = {"guidance": True, "limit": cap_mib * 2**20, "memory": "auto", "model": model}
        searched = largest_fitting_size(student, 4096, 4096, native_side=64, fits_now=False, **options)
        following = sizes[sizes.index(searched) + 1]
        fresh = {**options, "model": MemoryModel(student)}
        estimates = [estimate_memory(student, plan_stages(*size, 64), **settings)
                     for size in (searched, following) for settings in (options, fresh)]
        assert [e.fits for e in estimates] == [True, True, False, False]
        assert estimates[0].stages == estimates[1].stages and estimates[2].stages == estimates[3].stages
        assert estimates[0].modes[-1] == "floor, skips parked on disk, up-sampling fused, resnets depth-first"
