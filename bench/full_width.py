"""Converts full-width UNets built from their published configs (random weights) and runs one forward pass.

    python bench/full_width.py [--models sd15 sdxl] [--latent 64]

Prints, per model: self-attention layers converted, parameters added, forward time at a latent of the given size
(batch 1), peak resident memory of the process, and whether the output is finite. Weights are random (the hubs are
unreachable here); what is checked is the conversion and the shapes, not image quality.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

import linfuse

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "configs"


def build(name: str, **overrides) -> UNet2DConditionModel:
    """The published config of ``name`` (entries in ``overrides`` replaced), with small random weights."""
    config = json.loads((CONFIGS / f"{name}_unet.json").read_text()) | overrides
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():  # small random weights: fast to draw, and activations stay finite
            p.normal_(0.0, 0.02, generator=generator)
        for m in unet.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
    return unet.eval()


def inputs(unet, latent: int) -> dict:
    g = torch.Generator().manual_seed(1)
    kwargs = {"sample": torch.randn(1, 4, latent, latent, generator=g), "timestep": torch.tensor(500),
              "encoder_hidden_states": torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        size = float(latent * 8)
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]])}
    return kwargs


def check(name: str, latent: int) -> None:
    start = time.perf_counter()
    unet = build(name)
    report = linfuse.linearize(unet)
    built = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        out = unet(**inputs(unet, latent)).sample
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{name}: {report.layers_replaced} layers, {report.parameters_added:,} parameters added, "
          f"build {built:.1f} s, forward {latent}x{latent} latent {seconds:.1f} s, output {tuple(out.shape)} "
          f"finite={bool(torch.isfinite(out).all())}, process peak RSS {peak:.1f} GiB")
    del unet, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--latent", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    for name in args.models:
        check(name, args.latent)


if __name__ == "__main__":
    main()
