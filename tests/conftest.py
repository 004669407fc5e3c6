import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable is read when a kernel is
# decorated, so it must be set before linfuse's Triton modules are imported (they are imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (the README's test command runs two workers) each worker, and every process it starts, computes
# on one thread: two workers of two threads each would share two cores four ways, and a picture made in a child
# process must be the one the worker makes (reductions split over another thread count round differently).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def student():
    """The bundled linear-attention student, on the CPU (shared: tests must not change it)."""
    from linfuse.pipelines import load_pipeline

    return load_pipeline(None, device="cpu")


@pytest.fixture(scope="session")
def teacher():
    """The bundled softmax teacher, on the CPU (shared: tests must not change it)."""
    from linfuse.pipelines import load_pipeline

    return load_pipeline("teacher", method=None, device="cpu")


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A tiny SD-1.x pipeline saved as a teacher folder (shared: tests must not change it)."""
    from tiny_models import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("teacher") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(path)
    return path
