"""Run by torchrun in tests/test_patch_parallel.py: the bundled student once whole, once split across the ranks."""

import json
import sys

import torch
import torch.distributed as dist

from linfuse.pipelines import load_pipeline
from linfuse.pipelines.patch_parallel import patch_parallel

dist.init_process_group("gloo")
pipe = load_pipeline(None, device="cpu")
pipe.set_progress_bar_config(disable=True)
width, height = int(sys.argv[1]), int(sys.argv[2])
call = {"prompt": "red apple on a blue background", "width": width, "height": height, "num_inference_steps": 4,
        "guidance_scale": 5.0, "output_type": "latent"}
whole = pipe(**call, generator=torch.Generator().manual_seed(0)).images
with patch_parallel(pipe) as bounds:
    split = pipe(**call, generator=torch.Generator().manual_seed(0)).images
difference = (split - whole).abs().max().item()
rows = torch.tensor(bounds["rows"])
everyone = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
dist.all_gather(everyone, rows)
if dist.get_rank() == 0:
    print(json.dumps({"max_abs_difference": difference, "scale": whole.abs().max().item(),
                      "bands": [r.tolist() for r in everyone]}))
dist.destroy_process_group()
