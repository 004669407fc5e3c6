"""Full-width SD-1.5 and SDXL UNets (random weights from the published configs): convert and run one forward.

Uses bench/full_width.py's builder so the script the README points at is exercised too. About 4 GiB (SD-1.5) and
10 GiB (SDXL) of memory and under a minute on 2 cores.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import linfuse

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "full_width.py"


def load_script():
    spec = importlib.util.spec_from_file_location("full_width", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, layers", [("sd15", 16), ("sdxl", 70)])
def test_full_width_unet_converts_and_runs_at_a_64x64_latent(name, layers):
    script = load_script()
    unet = script.build(name)
    assert linfuse.linearize(unet).layers_replaced == layers
    with torch.no_grad():
        out = unet(**script.inputs(unet, 64)).sample
    assert out.shape == (1, 4, 64, 64)
    assert torch.isfinite(out).all()
    assert out.std() > 0
