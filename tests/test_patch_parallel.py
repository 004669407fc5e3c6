"""Patch parallelism: one image denoised by two CPU processes (gloo) equals the single-process result."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linfuse.errors import InvalidArgumentError
from linfuse.pipelines.patch_parallel import _check_unet, band_bounds, patch_parallel
from linfuse.pipelines.patch_parallel_dit import check_flux_transformer, flux_bands

SCRIPT = Path(__file__).parent / "scripts" / "patch_parallel_job.py"
DIT_SCRIPT = Path(__file__).parent / "scripts" / "patch_parallel_dit_job.py"


def run_ranks(script: Path, processes: int, *args: str) -> dict:
    """``torchrun --nproc_per_node processes script args`` on CPU threads; the JSON line rank 0 printed last."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([torchrun, "--nproc_per_node", str(processes), str(script), *args], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_gloo_processes_reproduce_the_single_process_latents():
    report = run_ranks(SCRIPT, 2, "96", "144")
    assert report["bands"] == [[0, 20], [20, 36]]  # 36 latent rows: 5 and 4 blocks of 4 rows
    assert report["max_abs_difference"] < 1e-4 and report["scale"] > 0.5
    assert report["collective_devices"] == ["cpu"]  # the data's device, forwards run with meta as the default


def test_three_gloo_processes_reproduce_a_clear_flux_image():
    """Bands of 6, 5 and 5 token rows (the middle one has a halo on both sides) against one process."""
    report = run_ranks(DIT_SCRIPT, 3, "96", "128")
    assert report["bundled"]["bands"] == [[0, 6], [6, 11], [11, 16]]  # 128 px: 16 rows of 12 packed tokens
    assert report["pooled"]["bands"] == [[0, 6], [6, 12], [12, 16]]  # pool 2: bands of whole 2-row blocks
    assert report.pop("collective_devices") == ["cpu"]  # the data's device, meta as the default in forwards
    for run in report.values():
        assert run["max_abs_difference"] < 1e-4 and run["scale"] > 0.5 and run["undone"]


def test_flux_bands_align_to_the_pool_and_hold_the_halo():
    assert flux_bands(16, 3, 1, 3) == [(0, 6), (6, 11), (11, 16)]
    assert flux_bands(17, 3, 2, 2) == [(0, 6), (6, 12), (12, 17)]  # the last band takes the unpooled row
    with pytest.raises(InvalidArgumentError, match="fewer than the 4 halo rows"):
        flux_bands(16, 5, 1, 4)
    with pytest.raises(InvalidArgumentError, match="fewer than the 3 processes"):
        flux_bands(5, 3, 2, 1)


def test_flux_without_clear_everywhere_is_refused(tmp_path):
    from tests.tiny_dit_pipelines import build_pipeline

    with pytest.raises(InvalidArgumentError, match="needs every attention layer converted to clear"):
        check_flux_transformer(build_pipeline("flux").transformer)
    with pytest.raises(InvalidArgumentError, match="supports FLUX transformers"):
        check_flux_transformer(build_pipeline("sd3").transformer)


def test_bands_align_to_the_down_sampling_factor():
    assert band_bounds(64, 2, 8) == [(0, 32), (32, 64)]
    assert band_bounds(40, 3, 4) == [(0, 16), (16, 28), (28, 40)]
    with pytest.raises(InvalidArgumentError, match="must be a multiple of 8"):
        band_bounds(60, 2, 8)
    with pytest.raises(InvalidArgumentError, match="fewer than the 4 processes"):
        band_bounds(24, 4, 8)


def test_softmax_or_spatial_layers_and_missing_process_group_are_refused(teacher):
    with pytest.raises(InvalidArgumentError, match="needs every self-attention layer converted to linfusion or sana"):
        _check_unet(teacher.unet)
    with pytest.raises(InvalidArgumentError, match="launch with torchrun"), patch_parallel(teacher):
        pass
