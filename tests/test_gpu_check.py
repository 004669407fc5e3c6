"""bench/gpu_check.py --dry-run: the GPU validation script runs end to end on the CPU at tiny sizes, so it cannot rot
before the next session that has a GPU."""

import json
import subprocess
import sys
from pathlib import Path

from linfuse.kernels.model_shapes import MODEL_PROBLEMS

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_dry_run_writes_every_section(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    sections = results["sections"]
    assert list(sections) == ["environment", "configs", "linear_bandwidth", "local_flux4k", "unet_sd15", "lean_16k",
                              "flux_clear"]
    assert not [name for name, section in sections.items() if "error" in section]
    rows = sections["configs"]["rows"]
    assert {r["problem"] for r in rows} == {p.name for p in MODEL_PROBLEMS} and {r["rank"] for r in rows} == {0, 1}
    for row in rows:  # fp32 reference path against the fp64 one: small but measured errors
        assert row["ok"] and 0 <= row["worst"] < 1e-5 and set(row["errors"]) == {"out", "dq", "dk", "dv"}
    assert any(row["worst"] > 0 for row in rows)
    assert len(sections["linear_bandwidth"]["rows"]) == 4 and all(r["ms"] > 0 for r in sections["linear_bandwidth"]
                                                                  ["rows"])
    assert {r["kernel"] for r in sections["local_flux4k"]["rows"]} == {"linfuse reference", "dense SDPA (all pairs)"}
    unet = sections["unet_sd15"]
    expected = {(method, latent) for method in ("sdpa", "linfusion") for latent in (8, 16)}
    assert {(r["method"], r["latent"]) for r in unet["rows"]} == expected
    assert set(unet["speedup_vs_sdpa"]) == {"8", "16"}
    lean = sections["lean_16k"]
    assert lean["finite"] and lean["seconds"] > 0 and lean["image_px"] == 256
    assert lean["estimates"]["lean"]["device_bytes"] < lean["estimates"]["plain"]["device_bytes"]
    flux = sections["flux_clear"]
    expected = {(method, side) for method in ("sdpa", "clear") for side in (128, 256)}
    assert {(r["method"], r["image_px"]) for r in flux["rows"]} == expected
    assert set(flux["speedup_vs_sdpa"]) == {"128", "256"} and all(r["ms"] > 0 for r in flux["rows"])
    report = (tmp_path / "results.md").read_text()
    assert "| SDXL |" in report and "## SD-1.5 UNet forward" in report and "| estimate, lean |" in report
    assert "## FLUX.1-dev transformer forward" in report
