"""What the active Triton target can hold: the resource model the kernel launchers choose their configs by.

Everything is read from ``triton.runtime.driver.active``: its ``get_current_target()`` (backend and architecture)
and, on a real CUDA driver, the device's own properties (opt-in shared memory per block, multiprocessors). Under a
stand-in driver (:mod:`linfuse.kernels.standin`) the same code reads the stand-in's target and the table below, so
a CPU machine makes the same choice a GPU of that architecture would.
"""

from dataclasses import dataclass
from functools import cache

import torch

# Opt-in shared memory per block (bytes) by compute capability, from NVIDIA's tuning guides; unknown ones take the
# entry of the nearest lower architecture.
SHARED_MEMORY_PER_BLOCK = {70: 98_304, 75: 65_536, 80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376,
                           90: 232_448, 100: 232_448, 120: 101_376}
# Multiprocessors of a representative part (stand-in only; a real device reports its own).
MULTIPROCESSORS = {70: 80, 75: 40, 80: 108, 86: 84, 87: 16, 89: 128, 90: 132, 100: 148, 120: 170}
MAX_REGISTERS_PER_THREAD = 255  # ptxas never allocates more; above it a kernel spills


@dataclass(frozen=True)
class TargetLimits:
    """The limits of one target that decide whether a kernel config can launch, and how many programs fill it."""

    backend: str
    arch: int
    shared_memory: int
    multiprocessors: int

    @property
    def key(self) -> str:
        """Names the target in config caches: configs chosen for one never leak to another."""
        return f"{self.backend}:{self.arch}:{self.shared_memory}"


def table_limits(arch: int, backend: str = "cuda") -> TargetLimits:
    """Limits of an architecture from the tables (what a stand-in driver reports)."""
    known = [a for a in SHARED_MEMORY_PER_BLOCK if a <= arch] or [min(SHARED_MEMORY_PER_BLOCK)]
    nearest = max(known)
    return TargetLimits(backend, arch, SHARED_MEMORY_PER_BLOCK[nearest], MULTIPROCESSORS[nearest])


def active_limits() -> TargetLimits:
    """Limits of the active Triton driver's target; on a real CUDA driver, those of the current device (the one
    Triton launches on)."""
    from triton.runtime import driver

    from .standin import active_standin

    standin = active_standin()
    if standin is not None:
        return standin.limits
    target = driver.active.get_current_target()
    arch = target.arch if isinstance(target.arch, int) else 0
    return _cuda_limits(target.backend, arch, torch.cuda.current_device())


@cache
def _cuda_limits(backend: str, arch: int, index: int) -> TargetLimits:
    props = torch.cuda.get_device_properties(index)
    shared = getattr(props, "shared_memory_per_block_optin", 0) or table_limits(arch, backend).shared_memory
    return TargetLimits(backend, arch, int(shared), int(props.multi_processor_count))
