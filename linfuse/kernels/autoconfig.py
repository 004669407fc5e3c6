"""Choosing each kernel's config by what the active target can hold.

A launcher lists candidate configs in its order of preference (the tile shapes that should run fastest first) and
builds a :class:`~linfuse.kernels.triton_utils.Launch` for any of them. :func:`choose` compiles candidates for the
active target, reads the shared memory each needs (``metadata.shared``) and whether it spills (on CUDA the loaded
kernel's ``n_spills``, under the stand-in a stack frame in its cubin), and keeps the first that fits the target's
opt-in shared memory per block without spilling; failing that, the first that fits at all. The choice is cached per
(target, kernel, problem class), so each class compiles once. A config forced by the caller is used as it is, and
Triton's interpreter (which compiles nothing) takes the first candidate.

On CUDA with ``LINFUSE_TRITON_AUTOTUNE=1``, kernels that only write their outputs are also timed over the first
few candidates that fit (``triton.testing.do_bench``), and the fastest is kept for that problem class. Under the
stand-in driver the same code runs, compile only, so CI sees the choice a GPU would make.
"""

import os
from collections.abc import Callable, Sequence

from ..errors import InvalidArgumentError
from .dispatch import interpreting
from .hardware import active_limits

AUTOTUNE_ENV = "LINFUSE_TRITON_AUTOTUNE"
AUTOTUNE_CANDIDATES = 4
_CHOICES: dict[tuple, dict] = {}
_ALTERNATIVE = [0]  # readiness checks: take the n-th fitting config instead of the first (what autotuning may pick)


class NoConfigFitsError(InvalidArgumentError):
    """No kernel config of a problem fits the target's shared memory. Raised before anything launches: under
    backend "auto" the caller runs the PyTorch reference instead (with a warning), under "triton" it is the error."""


def choose(family: str, problem: str, candidates: Sequence[dict], build: Callable[[dict], object], *,
           pure: bool = True, forced: dict | None = None) -> dict:
    """The config to launch ``family`` with for ``problem`` on the active target (see the module docstring).

    ``build(config)`` returns the Launch for that config; nothing is launched unless autotuning times it.
    """
    if forced is not None:
        return forced
    if interpreting():
        return candidates[0]
    limits = active_limits()
    tune = pure and _autotune_enabled()
    key = (limits.key, family, problem, tune, _ALTERNATIVE[0])
    if key not in _CHOICES:
        _CHOICES[key] = _first_fitting(family, problem, candidates, build, limits, tune)
    return _CHOICES[key]


def _first_fitting(family, problem, candidates, build, limits, tune) -> dict:
    skip = _ALTERNATIVE[0]
    fitting, spilling, refused = [], [], []
    for config in candidates:
        launch = build(config)
        compiled = launch.compile()
        shared = int(compiled.metadata.shared)
        if shared > limits.shared_memory:
            refused.append(shared)
            continue
        (spilling if _spills(compiled, limits.arch) else fitting).append((config, launch))
        if len(fitting) > skip and not tune:
            break
        if tune and len(fitting) >= AUTOTUNE_CANDIDATES:
            break
    if tune and len(fitting) > 1:
        return _fastest(fitting)
    if fitting:
        return fitting[min(skip, len(fitting) - 1)][0]
    if spilling:
        return spilling[0][0]
    raise NoConfigFitsError(
        f"no {family} kernel config fits {limits.backend} sm_{limits.arch} ({limits.shared_memory:,} B of shared "
        f"memory per block) for {problem}: the smallest of {len(refused)} candidates needs {min(refused):,} B"
    )


def _spills(compiled, arch: int) -> bool:
    """Whether the kernel spills registers (under the stand-in: a stack frame in its cubin)."""
    from .standin import stack_bytes, standin_active

    if standin_active():
        return stack_bytes(compiled.asm["cubin"]) > 0
    compiled._init_handles()  # loads the module; n_spills comes from the driver
    return getattr(compiled, "n_spills", 0) > 0


def _fastest(fitting) -> dict:
    from triton.testing import do_bench

    timings = [(do_bench(launch.run, warmup=5, rep=20), index) for index, (_, launch) in enumerate(fitting)]
    return fitting[min(timings)[1]][0]


def _autotune_enabled() -> bool:
    from .standin import standin_active

    return os.environ.get(AUTOTUNE_ENV) == "1" and not standin_active()


def use_alternative(rank: int) -> None:
    """Choose the ``rank``-th fitting config (0: the first, as always) — a readiness check of the configs that
    autotuning may pick instead of the first."""
    _ALTERNATIVE[0] = rank


def chosen() -> dict[str, dict]:
    """The configs chosen so far, by kernel family and problem (for reports)."""
    return {f"{family} [{problem}]": config for (_, family, problem, _, _), config in _CHOICES.items()}


def clear_choices() -> None:
    """Forget every cached choice (tests, or after changing LINFUSE_TRITON_AUTOTUNE)."""
    _CHOICES.clear()
