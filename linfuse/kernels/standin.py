"""A stand-in Triton driver: the launchers run as on a GPU of a chosen architecture, compiling instead of launching.

Under ``compiling_for(90)`` the active Triton driver reports ``GPUTarget("cuda", 90, 32)``; meta tensors stand for
device tensors, the public entry points (`linear_attention`, `local_attention`, their backward passes) choose their
configs by that target's limits exactly as on the GPU, and every kernel launch becomes a compilation (PTX and cubin
for that architecture, through the ptxas that ships with Triton). The compiled kernels are recorded with the
resources they need, which is how a machine without a GPU proves the kernels GPU-ready::

    with compiling_for(90) as log:
        out = linear_attention(q_meta, k_meta, v_meta)     # nothing runs; two kernels compile for sm_90
    for kernel in log.kernels:
        print(kernel.name, kernel.shared, kernel.resources.spills)
"""

import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver

from .hardware import TargetLimits, table_limits


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one compiled kernel."""

    registers: int
    spill_stores: int
    spill_loads: int

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclass
class CompiledRecord:
    """One kernel compiled under the stand-in: its name, launch grid, config and the compiled artefacts."""

    name: str
    grid: tuple
    config: dict
    compiled: object  # triton.compiler.CompiledKernel
    arch: int

    @property
    def shared(self) -> int:
        return int(self.compiled.metadata.shared)

    @cached_property
    def resources(self) -> Resources:
        return ptxas_resources(self.compiled.asm["ptx"], self.arch)

    def sass(self) -> str:
        return cuobjdump(self.compiled.asm["cubin"], "--dump-sass")


@dataclass
class CompileLog:
    kernels: list[CompiledRecord] = field(default_factory=list)


class StandInDriver(DriverBase):
    """Reports a CUDA target without a GPU. ``Launch.run`` (:mod:`linfuse.kernels.triton_utils`) compiles under it
    instead of launching."""

    def __init__(self, limits: TargetLimits):
        super().__init__()
        self.limits = limits
        self.target = GPUTarget("cuda", limits.arch, 32)
        self.log = CompileLog()

    @classmethod
    def is_active(cls):
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("the stand-in driver compiles kernels; it has no launcher")

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_benchmarker(self):
        raise NotImplementedError("the stand-in driver cannot time kernels")

    def get_current_device(self):
        return f"standin-sm{self.limits.arch}"  # JITFunction keeps one compile cache per device: one per target

    def get_current_stream(self, device=None):
        return 0


def active_standin() -> "StandInDriver | None":
    """The stand-in driver if one is active (read without creating a real driver: a CPU machine has none)."""
    active = driver._active
    return active if isinstance(active, StandInDriver) else None


def standin_active() -> bool:
    return active_standin() is not None


@contextlib.contextmanager
def compiling_for(arch: int, limits: TargetLimits | None = None):
    """Make a CUDA target of compute capability ``arch`` (80, 86, 89, 90, ...) the active Triton driver."""
    standin = StandInDriver(limits or table_limits(arch))
    previous = driver._active  # None until a real driver was first asked for; on a CPU machine there is none
    driver.set_active(standin)
    try:
        yield standin.log
    finally:
        driver._active = previous


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(arch).path
    except TypeError:  # older Triton: one ptxas for every architecture
        return compiler.get_ptxas().path


def _gpu_name(arch: int) -> str:
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    return sm_arch_from_capability(arch)


def ptxas_resources(ptx: str, arch: int) -> Resources:
    """Registers and spill bytes from ``ptxas -v`` on the kernel's PTX (the same ptxas Triton compiled it with)."""
    ptxas = _ptxas(arch)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([ptxas, "-v", f"--gpu-name={_gpu_name(arch)}", str(source), "-o",
                                 str(Path(tmp) / "kernel.o")], capture_output=True, text=True, check=True)
    log = result.stderr + result.stdout
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise RuntimeError(f"could not read registers and spills from ptxas -v:\n{log}")
    return Resources(int(registers.group(1)), int(spills.group(1)), int(spills.group(2)))


def stack_bytes(cubin: bytes) -> int:
    """Stack frame of a cubin's kernel (cuobjdump's resource usage; nonzero when registers spilled). Reads the
    compiled binary, so it costs no recompilation: the config chooser's spill check."""
    usage = cuobjdump(cubin, "--dump-resource-usage")
    match = re.search(r"STACK:(\d+)", usage)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{usage}")
    return int(match.group(1))


def cuobjdump(cubin: bytes, option: str) -> str:
    """What the Triton wheel's cuobjdump prints for a cubin with ``option`` (--dump-sass, --dump-resource-usage)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([_tool("cuobjdump"), option, str(path)], capture_output=True, text=True,
                              check=True).stdout
