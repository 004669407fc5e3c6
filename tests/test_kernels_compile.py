"""The Triton kernels are GPU-ready: compiled for sm_80, sm_89 and sm_90 on this CPU machine, for every model problem.

`python -m linfuse.kernels.readiness` runs each problem of `linfuse.kernels.model_shapes.MODEL_PROBLEMS` (SD-1.5 at
three levels, SD-2.1, SDXL, Sana, FLUX at 1K and 4K, SD3, PixArt-Σ) through the public `linear_attention` /
`local_attention` entry points, forward and backward, under a stand-in Triton driver: the launchers choose their
configs by the target's limits exactly as on a GPU, and each chosen kernel is compiled to PTX and cubin with the
ptxas that ships with Triton. The test asserts what a launch on real hardware needs: shared memory within the
target's opt-in limit per block, at most 255 registers, no spills. The kernels must be real JIT functions, so the
checks run in subprocesses with TRITON_INTERPRET unset (this test process runs the interpreter).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linfuse.errors import InvalidArgumentError
from linfuse.kernels import linear_attention, local_attention
from linfuse.kernels.hardware import SHARED_MEMORY_PER_BLOCK
from linfuse.kernels.model_shapes import HEAD_DIM_PROBLEMS, MODEL_PROBLEMS

ARCHS = (80, 89, 90)
DTYPES = ("fp16", "bf16")
FALLBACK_SCRIPT = Path(__file__).parent / "scripts" / "kernel_fallback.py"


def compile_env():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    return env


def start(*args):
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=compile_env())


def finish(process):
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def reports():
    """Every selected kernel (both dtypes in parallel, one process each); then, two at a time: each kernel's
    second-fitting config (what autotuning may pick) for a linear and a local problem, the head dims beyond the
    models on the tightest target (sm_89), fp32 there, and the fallback script."""
    readiness = ["-m", "linfuse.kernels.readiness", "--json"]
    every_arch = ["--arch", ",".join(map(str, ARCHS))]
    selected = [start(*readiness, *every_arch, "--sass", "90", "--dtype", dtype) for dtype in DTYPES]
    results = {"selected": [row for process in selected for row in finish(process)]}
    alternatives = start(*readiness, *every_arch, "--dtype", "bf16", "--problems", "SDXL,FLUX 1K r=8",
                         "--alternative", "1")
    coverage = start(*readiness, "--arch", "89", "--dtype", "bf16", "--problems",
                     ",".join(p.name for p in HEAD_DIM_PROBLEMS))
    results["alternatives"], results["coverage"] = finish(alternatives), finish(coverage)
    fp32 = start(*readiness, "--arch", "89", "--dtype", "fp32", "--problems", "SDXL,FLUX 1K r=8")
    fallback = start(str(FALLBACK_SCRIPT))
    results["fp32"], results["fallback"] = finish(fp32), finish(fallback)
    return results


def describe(rows):
    return "\n".join(f"sm_{r['arch']} {r['dtype']} {r['problem']} {r['direction']} {r['kernel']} {r['config']} "
                     f"shared {r['shared']}/{r['shared_limit']} regs {r['registers']} spills {r['spills']} "
                     f"{r['error'] or ''}" for r in rows)


def test_every_model_problem_compiles_within_every_targets_limits(reports):
    rows = reports["selected"]
    not_ready = [r for r in rows if not r["ready"]]
    assert not not_ready, describe(not_ready)
    for row in rows:
        assert row["shared_limit"] == SHARED_MEMORY_PER_BLOCK[row["arch"]]
        assert 0 < row["shared"] <= row["shared_limit"] and row["registers"] <= 255 and row["spills"] == 0
    seen = {(r["arch"], r["dtype"], r["problem"], r["direction"]) for r in rows}
    expected = {(a, d, p.name, direction) for a in ARCHS for d in DTYPES for p in MODEL_PROBLEMS
                for direction in ("forward", "backward")}
    assert seen == expected, sorted(expected - seen)
    kernels = {(r["problem"], r["direction"]): set() for r in rows}
    for r in rows:
        kernels[(r["problem"], r["direction"])].add(r["kernel"])
    assert kernels[("SDXL", "forward")] == {"_state_kernel", "_output_kernel"}
    assert kernels[("SDXL", "backward")] == {"_query_grad_kernel", "_key_grad_kernel"}
    assert kernels[("FLUX 4K r=40", "forward")] == kernels[("FLUX 4K r=40", "backward")] == {"_kernel"}


def test_the_largest_problems_that_used_to_overflow_shared_memory_now_fit(reports):
    """FLUX local attention (d = 128, 512 text tokens) needed 262,144 B forward on sm_90 and SDXL's linear backward
    106,496 B on sm_89: both above those targets' limits before configs were chosen by the target."""
    rows = {(r["arch"], r["problem"], r["direction"], r["kernel"]): r for r in reports["selected"] if
            r["dtype"] == "bf16"}
    assert rows[(90, "FLUX 1K r=8", "forward", "_kernel")]["shared"] <= 232_448
    assert rows[(89, "FLUX 4K r=40", "backward", "_kernel")]["shared"] <= 101_376
    assert rows[(89, "SDXL", "backward", "_query_grad_kernel")]["shared"] <= 101_376
    assert rows[(80, "SD-1.5 level 2", "backward", "_key_grad_kernel")]["shared"] <= 166_912


def test_the_choice_follows_the_target(reports):
    """The same kernel gets configs sized to each target: some problems take another config on sm_89 (101,376 B)
    than on sm_90 (232,448 B), and every kernel stays within its own target's limit, not just the largest one."""
    configs = {}
    for r in reports["selected"]:
        configs.setdefault((r["dtype"], r["problem"], r["direction"], r["kernel"]), {})[r["arch"]] = r["config"]
    differing = [key for key, by_arch in configs.items() if by_arch[89] != by_arch[90]]
    assert differing, "every kernel took the same config on sm_89 and sm_90"
    assert all(r["shared"] <= SHARED_MEMORY_PER_BLOCK[r["arch"]] for r in reports["selected"])


def test_dot_heavy_kernels_use_tensor_cores_on_sm90(reports):
    dot_heavy = {"_state_kernel", "_output_kernel", "_query_grad_kernel", "_kernel"}
    rows = [r for r in reports["selected"] if r["arch"] == 90 and r["kernel"] in dot_heavy]
    assert rows
    without = [r for r in rows if not r["tensor_core_ops"]]
    assert not without, describe(without)


def test_configs_autotuning_may_pick_instead_also_fit(reports):
    rows = reports["alternatives"]
    assert {r["problem"] for r in rows} == {"SDXL", "FLUX 1K r=8"}
    not_ready = [r for r in rows if not r["ready"]]
    assert not not_ready, describe(not_ready)
    first = {(r["arch"], r["problem"], r["direction"], r["kernel"]): r["config"] for r in reports["selected"]
             if r["dtype"] == "bf16"}
    differing = [r for r in rows if r["config"] != first[(r["arch"], r["problem"], r["direction"], r["kernel"])]]
    assert len(differing) >= len(rows) // 2  # most kernels have a second config that fits, and it was compiled


@pytest.mark.parametrize("run", ["coverage", "fp32"])
def test_other_head_dims_and_fp32_fit_the_tightest_target(reports, run):
    """Linear attention at d = 48…256 and local attention at d = 32, 80, 96 (bf16), and fp32 inputs (IEEE dots,
    4-byte operands), on sm_89's 101,376 B."""
    rows = reports[run]
    expected = {p.name for p in HEAD_DIM_PROBLEMS} if run == "coverage" else {"SDXL", "FLUX 1K r=8"}
    assert {r["problem"] for r in rows} == expected
    assert {r["direction"] for r in rows} == {"forward", "backward"}
    not_ready = [r for r in rows if not r["ready"]]
    assert not not_ready, describe(not_ready)


def test_a_target_no_config_fits_falls_back_under_auto_and_refuses_under_triton(reports):
    result = reports["fallback"]
    assert result["auto_shape"] == [1, 4096, 8, 64]
    assert len(result["auto_warnings"]) == 1  # once, though called twice
    assert ("no linear_attention.state kernel config fits cuda sm_90 (512 B of shared memory per block) for "
            "float16 d_k=64") in result["auto_warnings"][0]
    assert "running the PyTorch reference instead" in result["auto_warnings"][0]
    assert result["launched_after_auto"] == 0
    assert result["forced"].startswith("no linear_attention.state kernel config fits cuda sm_90")
    assert result["launched_after_forced"] == 0
    assert result["full_size_target_launches"] == ["_state_kernel", "_output_kernel"]


def test_head_dims_beyond_the_kernels_are_refused_before_launch():
    q = torch.randn(1, 16 + 4, 2, 160)
    with pytest.raises(InvalidArgumentError, match="head dim 160 is above the kernels' maximum of 128"):
        local_attention(q, q, q, grid=(4, 4), radius=2, num_global=4, backend="triton")
    q = torch.randn(1, 8, 2, 320)
    with pytest.raises(InvalidArgumentError, match="head dim 320 is above the kernels' maximum of 256"):
        linear_attention(q, q, q, backend="triton")
    # "auto" on these runs the reference, as for every CPU tensor
    assert linear_attention(q, q, q).shape == (1, 8, 2, 320)
