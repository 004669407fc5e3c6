"""Prove the kernels GPU-ready on a machine without a GPU: every model problem through the public entry points,
forward and backward, compiled for real CUDA targets under the stand-in driver.

    python -m linfuse.kernels.readiness --arch 80,89,90 --dtype fp16,bf16 [--problems NAME,...] [--json]

For each (architecture, dtype, problem, direction) the kernels the launchers chose are compiled (PTX → cubin with
Triton's ptxas) and reported with the config, the shared memory they need against the target's limit, registers and
spill bytes (``ptxas -v``), and on request the tensor-core instructions in their SASS (HMMA, or HGMMA for sm_90's
wgmma). A problem the target cannot run is reported with the launcher's refusal. Run it with TRITON_INTERPRET unset:
the interpreter replaces the kernels before they can be compiled.
"""

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .hardware import MAX_REGISTERS_PER_THREAD, active_limits
from .model_shapes import HEAD_DIM_PROBLEMS, MODEL_PROBLEMS, AttentionProblem

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TENSOR_CORE_OPS = re.compile(r"\b(HMMA|HGMMA)\b")


@dataclass
class KernelReport:
    arch: int
    dtype: str
    problem: str
    direction: str
    kernel: str
    config: dict
    shared: int
    shared_limit: int
    registers: int
    spills: int
    tensor_core_ops: int | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return (self.error is None and self.shared <= self.shared_limit and not self.spills
                and self.registers <= MAX_REGISTERS_PER_THREAD)


def check(problem: AttentionProblem, arch: int, dtype: str, *, sass: bool = False) -> list[KernelReport]:
    """Compile what a forward and a backward of ``problem`` launch on ``arch``; one report per kernel."""
    from .autoconfig import NoConfigFitsError
    from .standin import compiling_for

    reports = []
    with compiling_for(arch) as log:
        limit = active_limits().shared_memory
        q, k, v = problem.tensors(DTYPES[dtype], requires_grad=True)
        try:
            out = problem.run(q, k, v, backend="triton")
            forward = len(log.kernels)
            out.backward(torch.empty_like(out))
        except NoConfigFitsError as error:
            return [KernelReport(arch, dtype, problem.name, "both", "-", {}, 0, limit, 0, 0, error=str(error))]
        for index, record in enumerate(log.kernels):
            resources = record.resources
            ops = len(TENSOR_CORE_OPS.findall(record.sass())) if sass else None
            reports.append(KernelReport(arch, dtype, problem.name, "forward" if index < forward else "backward",
                                        record.name, _plain(record.config), record.shared, limit,
                                        resources.registers, resources.spills, ops))
    return reports


def _counts_sass(sass: str | None, arch: int) -> bool:
    return sass is not None and (sass == "all" or str(arch) in sass.split(","))


def _plain(config: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linfuse.kernels.readiness", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="80,89,90", help="compute capabilities, comma-separated")
    parser.add_argument("--dtype", default="fp16,bf16", help=f"comma-separated: {', '.join(DTYPES)}")
    parser.add_argument("--problems", default="", help="problem names (model_shapes.MODEL_PROBLEMS and "
                        "HEAD_DIM_PROBLEMS); default: every model problem")
    parser.add_argument("--sass", nargs="?", const="all", default=None, metavar="ARCHS",
                        help="count tensor-core instructions in the SASS (of these compute capabilities, "
                             "comma-separated; without a value: every --arch)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of kernel reports")
    parser.add_argument("--alternative", type=int, default=0,
                        help="compile each kernel's n-th fitting config instead of the first (autotuning's choices)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels before they can be compiled")
    from .autoconfig import use_alternative

    use_alternative(args.alternative)
    names = [n for n in args.problems.split(",") if n]
    known = MODEL_PROBLEMS + HEAD_DIM_PROBLEMS
    problems = [p for p in known if p.name in names] if names else list(MODEL_PROBLEMS)
    unknown = set(names) - {p.name for p in problems}
    if unknown:
        parser.error(f"--problems: unknown {sorted(unknown)}; known: {[p.name for p in known]}")
    reports, start = [], time.perf_counter()
    for arch in (int(a) for a in args.arch.split(",")):
        for dtype in args.dtype.split(","):
            if dtype not in DTYPES:
                parser.error(f"--dtype must be among {', '.join(DTYPES)}; got {dtype!r}")
            for problem in problems:
                reports += check(problem, arch, dtype, sass=_counts_sass(args.sass, arch))
    if args.json:
        json.dump([asdict(r) | {"ready": r.ready} for r in reports], sys.stdout)
        return 0
    for r in reports:
        verdict = "ok" if r.ready else "NOT READY"
        print(f"sm_{r.arch} {r.dtype} {r.problem:<20} {r.direction:<8} {r.kernel:<20} shared {r.shared:>7,}/"
              f"{r.shared_limit:,} regs {r.registers:>3} spills {r.spills:>4} {verdict} {r.error or ''}")
    print(f"{sum(r.ready for r in reports)}/{len(reports)} kernels ready in {time.perf_counter() - start:.0f} s")
    return 0 if all(r.ready for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
