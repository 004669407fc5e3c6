"""What the floor rung costs against lean: the bundled student's UNet calls at one size, the two modes in turn.

    python bench/floor_cost.py                  # 2048² image (512² latent), 3 calls of each mode, alternating
    python bench/floor_cost.py --size 1024 --calls 5 --json out.json
    python bench/floor_cost.py --modes floor    # one mode only (to time whole processes against each other)

One process loads the student, draws one latent and text conditioning, then runs the UNet (both guidance halves, as
generation does) lean, floor, lean, floor … and prints each call's seconds, the median floor/lean ratio of the pairs
and the largest difference of the two outputs. On this CPU the floor is the depth-first resnets only (there is no
host memory to park to); on CUDA (``--device cuda``) it also reads skips and residuals back from pinned host memory.
"""

import argparse
import json
import statistics
import time

import torch


def unet_call(pipe, mode: str, latents, timestep, context):
    from linfuse.pipelines.lean import lean_mode
    from linfuse.pipelines.preflight import rung_ladder

    settings = rung_ladder(mode, latents.device.type)[0]
    with torch.no_grad(), lean_mode(pipe.unet, settings):
        began = time.perf_counter()
        out = pipe.unet(latents, timestep, context).sample
        if latents.device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    parser.add_argument("--calls", type=int, default=3, help="UNet calls of each mode (default 3)")
    parser.add_argument("--modes", default="lean,floor", help="comma-separated, in turn (default lean,floor)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    from linfuse.pipelines import load_pipeline

    pipe = load_pipeline(None, device=args.device)
    side = args.size // pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, pipe.unet.config.in_channels, side, side, generator=generator).to(args.device)
    context = torch.randn(2, 8, pipe.unet.config.cross_attention_dim, generator=generator).to(args.device)
    timestep = torch.tensor(500, device=args.device)
    modes = args.modes.split(",")
    seconds = {mode: [] for mode in modes}
    outputs = {}
    for call in range(args.calls):
        for mode in modes:
            outputs[mode], elapsed = unet_call(pipe, mode, latents, timestep, context)
            seconds[mode].append(elapsed)
            print(f"call {call + 1} {mode}: {elapsed:.2f} s", flush=True)
    if modes != ["lean", "floor"]:
        return
    ratios = [floor / lean for lean, floor in zip(seconds["lean"], seconds["floor"], strict=True)]
    difference = (outputs["floor"] - outputs["lean"]).abs().max().item()
    result = {"size": args.size, "latent": side, "device": args.device, "seconds": seconds,
              "floor_over_lean": statistics.median(ratios), "max_abs_difference": difference}
    print(f"{args.size}² image ({side}² latent) on {args.device}: floor/lean = {result['floor_over_lean']:.2f} "
          f"(median of {len(ratios)} pairs), outputs differ by at most {difference:.2e}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
