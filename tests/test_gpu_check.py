"""bench/gpu_check.py --dry-run: the GPU validation script runs end to end on the CPU at tiny sizes, its kernels
through Triton's interpreter, so the launchers, the configs they choose and every section's bookkeeping have run
before the next session that has a GPU."""

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from linfuse.kernels.local_attention_reference import local_attention_mask
from linfuse.kernels.model_shapes import MODEL_PROBLEMS

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH / "gpu_check.py"
ORDER = ["environment", "configs", "linear_bandwidth", "unet_sd15", "local_flux4k", "compiled_unet", "lean_16k",
         "flux_clear"]


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_budget
        import gpu_models
        import kernel_speed

        yield types.SimpleNamespace(budget=gpu_budget, models=gpu_models, kernel_speed=kernel_speed)
    finally:
        sys.path.remove(str(BENCH))


def dry_run(out: Path, *extra: str) -> tuple[dict, float]:
    env = os.environ | {"TRITON_INTERPRET": "1"}
    began = time.perf_counter()
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *extra], capture_output=True,
                         text=True, timeout=900, env=env)
    seconds = time.perf_counter() - began
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), seconds


def test_bench_scripts_do_not_shadow_what_the_libraries_import():
    """A bench script runs with bench/ first on sys.path, so a bench file named like a package that transformers or
    diffusers probe for (bench/kernels.py against Hugging Face's `kernels`, probed by transformers 5.25) breaks every
    model import of that script. The models gpu_check builds must import with bench/ first on the path."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import accelerate, peft; "
             "from diffusers import FluxTransformer2DModel, UNet2DConditionModel; "
             "from transformers import CLIPTextModel")
    run = subprocess.run([sys.executable, "-c", probe, str(BENCH)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_dry_run_runs_every_section_through_the_triton_kernels(tmp_path):
    results, _ = dry_run(tmp_path)
    sections = results["sections"]
    assert list(sections) == ORDER
    assert not [name for name, section in sections.items() if "error" in section]
    assert all(isinstance(section["cut_short"], bool) for section in sections.values())
    rows = sections["configs"]["rows"]
    assert {r["problem"] for r in rows} == {p.name for p in MODEL_PROBLEMS} and sections["configs"]["all_ok"]
    for row in rows:  # the interpreted Triton kernels against the fp64 reference, and the configs they launched
        assert 0 < row["worst"] < 1e-5 and set(row["errors"]) == {"out", "dq", "dk", "dv"}
        kernels = row["configs"]
        if row["shape"].startswith("linear"):
            assert set(kernels) == {"_state_kernel", "_output_kernel", "_query_grad_kernel", "_key_grad_kernel"}
            assert all(config["BLOCK_N"] >= 16 for config in kernels.values())
        else:
            assert set(kernels) == {"_kernel", "_kernel backward"} and all("TILE" in c for c in kernels.values())
    bandwidth = sections["linear_bandwidth"]["rows"]
    assert bandwidth and all(r["ms"] > 0 and "_state_kernel" in r["configs"] for r in bandwidth)
    local = {r["family"]: r for r in sections["local_flux4k"]["rows"]}
    assert set(local) == {"triton", "sdpa", "flex"} and all(r["ms"] > 0 for r in local.values())
    assert local["flex"]["vs_triton"] < 1e-5  # the BlockMask from tile visibility is the kernel's mask
    assert sections["local_flux4k"]["speedup_vs_flex"] > 0
    unet = sections["unet_sd15"]
    assert {(r["method"], r["latent"]) for r in unet["rows"]} >= {("linfusion", 8), ("sdpa", 8)}
    assert unet["rows"][0]["method"] == "linfusion" and unet["speedup_vs_sdpa"]["8"] > 0
    if (BENCH / "compile.py").exists():
        assert sections["compiled_unet"].get("rows")
    else:
        assert sections["compiled_unet"]["skipped"] == "bench/compile.py not present"
    lean = sections["lean_16k"]
    assert lean["estimates"]["lean"]["device_bytes"] < lean["estimates"]["plain"]["device_bytes"]
    assert lean["finite"] and lean["call_seconds"] > 0 if not lean["cut_short"] else lean["skipped"]
    # The floor's CUDA path (pinned host rows) has its first GPU run here. At the dry run's latent 8 the deepest
    # level is 1×1, where GroupNorm over one pixel amplifies rounding: lean alone differs from plain there by 5e-4 of
    # the largest value, the floor by 1.2e-3 (at latent 16 both within 2e-6); a wrong row would differ by O(1).
    floor = lean["floor"]
    assert floor["mode"].startswith("floor, skips parked on disk") and floor["relative_difference"] < 5e-3
    assert "Floor (floor, skips parked on disk" in (tmp_path / "results.md").read_text()
    offload = lean["offload"]  # on CUDA it reports the bytes freed; here the hooks run around a real call
    assert offload["planned_released_bytes"] == 0 and set(offload["allocated"]) >= {"unet_runs", "removed"}
    assert "component offload" in (tmp_path / "results.md").read_text()
    flux = sections["flux_clear"]
    assert {(r["method"], r["image_px"]) for r in flux["rows"]} >= {("sdpa", 128), ("clear", 128)}
    report = (tmp_path / "results.md").read_text()
    table = report.split("\n\n")[1].splitlines()
    assert table[0] == "| target | measured | status |" and len(table) == 5
    assert "FlexAttention" in table[4] and "dry run" in table[4]  # measured in the dry run, but not a GPU figure
    assert "| SDXL |" in report and "_state_kernel: BLOCK_N=" in report and "| estimate, lean |" in report


def test_a_twenty_second_budget_ends_within_forty_seconds(tmp_path):
    """The whole dry run takes about 140 s; a 20 s budget ends it by cutting sections short. What runs past the
    budget is the case in flight when time runs out (cases are not interrupted) and Python's start: 4–10 s on an
    idle 2-core machine, up to 10 s more beside the other test worker, on one thread."""
    results, seconds = dry_run(tmp_path, "--budget", "20")
    sections = results["sections"]
    assert seconds < 40, seconds
    assert list(sections) == ORDER and not [name for name, s in sections.items() if "error" in s]
    assert all(isinstance(s["cut_short"], bool) for s in sections.values())
    cut = [name for name, s in sections.items() if s["cut_short"]]
    assert cut and all(any("out of time" in line for line in sections[name]["skipped"]) for name in cut)


def test_local_block_mask_matches_the_kernels_visibility(bench_modules):
    for grid, radius, window, text, block in (((9, 13), 3, "circle", 5, 16), ((12, 12), 2, "square", 32, 32)):
        n = text + grid[0] * grid[1]
        blocks = -(-n // block)
        mask, _ = bench_modules.kernel_speed.local_block_mask(grid, radius, text, block=block, window=window,
                                                              band_elements=2 * block * blocks * block)  # 2 per band
        dense = torch.zeros(blocks * block, blocks * block, dtype=torch.bool)
        dense[:n, :n] = local_attention_mask(grid, radius, window, text)
        tiles = dense.view(blocks, block, blocks, block)
        some = tiles.any(3).any(1)
        pad = torch.ones_like(dense)
        pad[:n, :n] = False
        every = (dense | pad).view(blocks, block, blocks, block).all(3).all(1)
        listed = mask.to_dense()[0, 0].bool()  # partial and full blocks together
        assert torch.equal(listed, some)
        full = torch.zeros_like(every)
        for row in range(blocks):
            count = int(mask.full_kv_num_blocks[0, 0, row])
            full[row, mask.full_kv_indices[0, 0, row, :count].long()] = True
        assert torch.equal(full, every) and (some & ~every).any()
        assert every.any() == (text >= block)  # a block of text queries sees every key


def test_budget_shares_the_time_left_and_records_what_it_skips(bench_modules):
    gpu_budget = bench_modules.budget
    order = list(gpu_budget.SECTION_SHARE)
    first = gpu_budget.deadline_for(order[1], order[1:], now=10.0, budget_s=109.0)
    assert first == pytest.approx(10 + 99 * gpu_budget.SECTION_SHARE[order[1]] / 0.99)
    assert gpu_budget.deadline_for(order[-1], order[-1:], now=50.0, budget_s=109.0) == 109.0
    assert gpu_budget.deadline_for(order[-1], order[-1:], now=120.0, budget_s=109.0) == 120.0  # spent: no time
    assert gpu_budget.grown(None, 256, 4) == 0.0
    assert gpu_budget.grown((128, 0.5), 256, 4) == pytest.approx(4 * 8.0)  # 8 s a call: a warm-up and three
    assert gpu_budget.grown((128, 1.0), 256, 4) == pytest.approx(2 * 16.0)  # past 10 s: a warm-up and one
    assert gpu_budget.grown((128, 1.0), 256, 2, calls=1) == pytest.approx(4.0)
    clock = iter([0.0, 5.0]).__next__
    budget = gpu_budget.Budget(clock, deadline=4.0)
    assert budget.allows("first", 3.0) and not budget.allows("second", 1.0)
    assert budget.cut_short and budget.skipped == ["second: out of time (1.0 s predicted, 0.0 s left)"]


def test_compiled_unet_section_runs_compile_rows_when_present(bench_modules, monkeypatch):
    gpu_budget, gpu_models = bench_modules.budget, bench_modules.models
    check = types.SimpleNamespace(dry_run=True, device="cpu")
    budget = gpu_budget.Budget(lambda: 0.0, deadline=100.0)
    if not (BENCH / "compile.py").exists():
        monkeypatch.delitem(sys.modules, "compile", raising=False)
        assert gpu_models.compiled_unet(check, budget) == {"skipped": "bench/compile.py not present"}
    seen = {}

    def compile_rows(*, device, dtype, latents, methods, seconds_left, tiny, backend):  # bench/compile.py's interface
        seen.update(device=device, dtype=dtype, latents=latents, methods=methods, left=seconds_left(), tiny=tiny,
                    backend=backend)
        return [{"method": "linfusion", "latent": 8, "eager_ms": 2.0, "compiled_ms": 1.0, "speedup": 2.0,
                 "compile_s": 3.0}, {"method": "sdpa", "latent": 16, "skipped": "out of time"}]

    monkeypatch.setitem(sys.modules, "compile", types.SimpleNamespace(compile_rows=compile_rows))
    budget = gpu_budget.Budget(lambda: 0.0, deadline=100.0)
    assert gpu_models.compiled_unet(check, budget) == {}
    assert seen == {"device": "cpu", "dtype": torch.float32, "latents": [8], "methods": ["linfusion", "sdpa"],
                    "left": 100.0, "tiny": True, "backend": "eager"}
    assert len(budget.partial["rows"]) == 2 and budget.cut_short


def test_sizes_the_preflight_refuses_are_named_with_the_reason(bench_modules):
    refusal = bench_modules.models.refusal
    # full-width SD-1.5 at a 1024² latent: the GEGLU holds 2.68e9 elements (the planner's trace, fp16, batch 1)
    assert "2.68e+09 elements reaches 2^31" in refusal({"max_elements": 2_684_354_560, "device_bytes": 19 << 30},
                                                       70 << 30)
    assert "needs 80.0 GiB, above the cap of 70.0 GiB" in refusal({"max_elements": 1 << 30, "device_bytes": 80 << 30},
                                                                  70 << 30)
    assert refusal({"max_elements": (1 << 31) - 1, "device_bytes": 70 << 30}, 70 << 30) is None
