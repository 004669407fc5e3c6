"""Run by torchrun in tests/test_patch_parallel.py: the bundled CLEAR DiT, and a pooled CLEAR conversion with
proportional attention, each once whole and once split across the ranks; prints the largest differences."""

import json
import sys

import torch
import torch.distributed as dist
from collective_devices import DEVICES, forwards_without_a_default_device, record_collectives

from linfuse.linearize import linearize
from linfuse.pipelines import load_pipeline
from linfuse.pipelines.patch_parallel import patch_parallel

dist.init_process_group("gloo")
record_collectives()
width, height = int(sys.argv[1]), int(sys.argv[2])
call = {"prompt": "red apple on a blue background", "width": width, "height": height, "num_inference_steps": 3,
        "true_cfg_scale": 5.0, "negative_prompt": "", "max_sequence_length": 16, "output_type": "latent"}
report = {}
bundled = load_pipeline("dit-student", device="cpu")  # CLEAR radius 4
pooled = load_pipeline("dit-teacher", method=None, device="cpu")
linearize(pooled, "clear", radius=3, pool=2, proportional_attention=True, train_tokens=16 * 16 + 16)
for name, pipe in (("bundled", bundled), ("pooled", pooled)):
    pipe.set_progress_bar_config(disable=True)
    whole = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    with patch_parallel(pipe) as bounds:
        hooks = forwards_without_a_default_device(pipe.transformer)
        split = pipe(**call, generator=torch.Generator().manual_seed(0)).images
        for hook in hooks:
            hook.remove()
    rows = torch.tensor(bounds["rows"])
    everyone = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, rows)
    after = pipe(**call, generator=torch.Generator().manual_seed(0)).images  # the split is undone
    report[name] = {"max_abs_difference": (split - whole).abs().max().item(), "scale": whole.abs().max().item(),
                    "undone": torch.equal(after, whole), "bands": [r.tolist() for r in everyone]}
report["collective_devices"] = sorted(DEVICES)
if dist.get_rank() == 0:
    print(json.dumps(report))
dist.destroy_process_group()
