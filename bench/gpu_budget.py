"""Time and memory bookkeeping of bench/gpu_check.py: one run's clock and budget, each section's deadline, what a
section skipped and why, and the release of device memory between sections.

A section's deadline is its share of what is left of the budget when it starts (time one section leaves unused
flows on to the next), ``share / Σ shares of the sections still to run``. A section asks :meth:`Budget.allows` before
each case with the seconds it predicts the case takes; a case that would run past the deadline is skipped, recorded,
and the section is marked ``cut_short``. A case the preflight refuses is skipped with that reason (not cut short).
"""

import contextlib
import gc
import os
import time

import torch

# Shares of the budget, in the order the sections run (most valuable first).
SECTION_SHARE = {"environment": 0.01, "configs": 0.22, "linear_bandwidth": 0.07, "unet_sd15": 0.17,
                 "local_flux4k": 0.16, "compiled_unet": 0.10, "lean_16k": 0.12, "flux_clear": 0.15}
BACKEND_ENVS = ("LINFUSE_LINEAR_ATTENTION_BACKEND", "LINFUSE_LOCAL_ATTENTION_BACKEND")
MEMORY_CAP = 70 * 2**30  # no case may need more device memory: the check runs on an 80 GB H100 as on an H200


class Budget:
    """The time one section may spend. ``rows`` and ``partial`` survive an exception in the section."""

    def __init__(self, clock, deadline: float):
        self.clock, self.deadline = clock, deadline
        self.skipped: list[str] = []
        self.cut_short = False
        self.partial: dict = {}

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows(self, case: str, predicted_s: float = 0.0) -> bool:
        """Whether ``case`` (predicted to take ``predicted_s``) fits before the deadline; if not, it is recorded as
        skipped and the section as cut short."""
        left = self.left()
        if left > predicted_s:
            return True
        self.skipped.append(f"{case}: out of time ({predicted_s:.1f} s predicted, {max(left, 0.0):.1f} s left)")
        self.cut_short = True
        return False

    def refuse(self, case: str, reason: str) -> None:
        self.skipped.append(f"{case}: {reason}")

    def rows(self, key: str = "rows") -> list:
        return self.partial.setdefault(key, [])


def deadline_for(name: str, remaining: list[str], now: float, budget_s: float) -> float:
    """``now`` plus this section's share of the budget left, among the sections still to run (``remaining``,
    this one first)."""
    total = sum(SECTION_SHARE[n] for n in remaining)
    return now + max(0.0, budget_s - now) * SECTION_SHARE[name] / total


def grown(previous: tuple[int, float] | None, size: int, power: float, calls: int = 4) -> float:
    """Seconds a case at ``size`` should take, from (size, seconds of one call) measured at a previous size:
    one call grows as (size / previous)^power; ``calls`` calls (one of them a warm-up, two past ten seconds)."""
    if previous is None:
        return 0.0
    one = previous[1] * (size / previous[0]) ** power
    return one * (calls if one < 10 else 2)


def release(device: str) -> None:
    """Between sections: drop what the last one left, so each starts from the same device memory and its peak
    counts from there."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_cap(device: str) -> int:
    """Bytes a case may need: MEMORY_CAP, or the device's free memory if less."""
    if device != "cuda":
        return MEMORY_CAP
    free, _ = torch.cuda.mem_get_info()
    return min(MEMORY_CAP, int(free))


@contextlib.contextmanager
def launches():
    """Record every Triton kernel launched inside through linfuse's launchers: {kernel: config} (the configs a row
    actually ran, under the interpreter as on a GPU)."""
    from linfuse.kernels import triton_utils

    original = triton_utils.Launch.run
    seen: dict[str, dict] = {}

    def run(launch):
        name = launch.name + (" backward" if launch.meta.get("BACKWARD") else "")
        seen[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in launch.config.items()}  # the last: after
        # any autotuning probes, the config the call ran with
        return original(launch)

    triton_utils.Launch.run = run
    try:
        yield seen
    finally:
        triton_utils.Launch.run = original


def timed(fn) -> tuple[object, float]:
    """(fn(), seconds), synchronised on CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - began


@contextlib.contextmanager
def backends(value: str):
    """Both attention backends set to ``value`` inside (their environment variables), restored after."""
    saved = {name: os.environ.get(name) for name in BACKEND_ENVS}
    os.environ.update({name: value for name in BACKEND_ENVS})
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
