"""Run by tests/test_kernels_compile.py with TRITON_INTERPRET unset: a target too small for every config.

Under a stand-in sm_90 whose shared memory is cut to 512 B no linear-attention config fits. "auto" must run the
PyTorch reference (the same shape comes back) with one warning naming why; a forced "triton" must raise before
anything is compiled for launch. Prints one JSON object.
"""

import json
import warnings

import torch

from linfuse.kernels import linear_attention
from linfuse.kernels.autoconfig import NoConfigFitsError
from linfuse.kernels.hardware import TargetLimits
from linfuse.kernels.standin import compiling_for

q, k, v = (torch.empty(1, 4096, 8, 64, device="meta", dtype=torch.float16) for _ in range(3))
report = {}
with compiling_for(90, TargetLimits("cuda", 90, 512, 132)) as log:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = linear_attention(q, k, v)
        again = linear_attention(q, k, v)
    report["auto_shape"] = list(out.shape)
    report["auto_warnings"] = [str(w.message) for w in caught]
    report["launched_after_auto"] = len(log.kernels)
    try:
        linear_attention(q, k, v, backend="triton")
        report["forced"] = "no error"
    except NoConfigFitsError as error:
        report["forced"] = str(error)
    report["launched_after_forced"] = len(log.kernels)
with compiling_for(90) as log:
    linear_attention(q, k, v)
    report["full_size_target_launches"] = [record.name for record in log.kernels]
print(json.dumps(report))
