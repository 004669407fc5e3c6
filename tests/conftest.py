import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable is read when a kernel is
# decorated, so it must be set before linfuse's Triton modules are imported (they are imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
