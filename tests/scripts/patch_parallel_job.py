"""Run by torchrun in tests/test_patch_parallel.py: the bundled student once whole, once split across the ranks."""

import json
import sys

import torch
import torch.distributed as dist
from collective_devices import DEVICES, forwards_without_a_default_device, record_collectives

from linfuse.pipelines import load_pipeline
from linfuse.pipelines.patch_parallel import patch_parallel

dist.init_process_group("gloo")
record_collectives()
pipe = load_pipeline(None, device="cpu")
pipe.set_progress_bar_config(disable=True)
width, height = int(sys.argv[1]), int(sys.argv[2])
call = {"prompt": "red apple on a blue background", "width": width, "height": height, "num_inference_steps": 4,
        "guidance_scale": 5.0, "output_type": "latent"}
whole = pipe(**call, generator=torch.Generator().manual_seed(0)).images
with patch_parallel(pipe) as bounds:
    hooks = forwards_without_a_default_device(pipe.unet)
    split = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    for hook in hooks:
        hook.remove()
difference = (split - whole).abs().max().item()
rows = torch.tensor(bounds["rows"])
everyone = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
dist.all_gather(everyone, rows)
if dist.get_rank() == 0:
    print(json.dumps({"max_abs_difference": difference, "scale": whole.abs().max().item(),
                      "bands": [r.tolist() for r in everyone], "collective_devices": sorted(DEVICES)}))
dist.destroy_process_group()
