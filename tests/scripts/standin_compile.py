"""Run by tests/test_compile.py with TRITON_INTERPRET unset: torch.compile(fullgraph=True) of linear and local
attention on meta tensors under the stand-in sm_90 driver. Prints one JSON object: how many kernels were compiled
for the target while dynamo traced (the ops' shape functions alone should run), then the kernels the compiled graph's
run compiled, and the outputs' shapes and dtypes."""

import json

import torch

from linfuse.kernels import linear_attention, local_attention
from linfuse.kernels.standin import compiling_for


def attend(q, k, v, local_q):
    return linear_attention(q, k, v), local_attention(local_q, local_q, local_q, grid=(8, 8), radius=3, num_global=4)


q = torch.empty(2, 256, 8, 64, device="meta", dtype=torch.float16)
local_q = torch.empty(1, 4 + 64, 4, 64, device="meta", dtype=torch.bfloat16)
with compiling_for(90) as log:
    while_tracing = []

    def backend(gm, example_inputs):
        while_tracing.append(len(log.kernels))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    out, local_out = torch.compile(attend, fullgraph=True, backend=backend)(q, q, q, local_q)
print(json.dumps({
    "graphs": len(while_tracing), "compiled_while_tracing": sum(while_tracing),
    "kernels": [record.name for record in log.kernels], "arches": sorted({record.arch for record in log.kernels}),
    "shared": [record.shared for record in log.kernels],
    "outputs": [[list(t.shape), str(t.dtype), t.device.type] for t in (out, local_out)],
}))
