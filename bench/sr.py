"""The SR companions against bicubic on held-out pictures: PSNR / SSIM on Y, border cropped by the scale.

    python bench/sr.py [--models espcn sesr-m5 …] [--scales 2 4] [--time-side 512]

Held out (never trained on): the scikit-image photographs astronaut, coffee and chelsea, and 12 emoji renders at
128×128 from seeds the training never drew (see ``linfuse/companions/sr/data.py``). Each picture is cropped to a
multiple of the scale, downscaled bicubically (antialiased), and restored ×scale by bicubic resampling or by the
bundled model (collapsed, tiled). Also printed: the training steps the weight file records, the inference
parameters (and, for SESR, those of the expanded training form at expansion 256), and milliseconds to upscale a
``--time-side``² luma plane with the collapsed model on this machine (median of 3, after a warm-up).
"""

import argparse
import re
import statistics
import time

import numpy as np
import torch

from linfuse.companions.sr import SR_MODELS, SR_SCALES, build_sr, load_sr, upscale_luma
from linfuse.companions.sr.data import held_out_pictures
from linfuse.companions.sr.evaluate import bicubic, score_upscaler, with_model
from linfuse.companions.sr.zoo import read_metadata, weights_path


def milliseconds(model, side: int) -> float:
    plane = np.random.default_rng(0).random((side, side)).astype(np.float32)
    upscale_luma(model, plane, tile=side)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        upscale_luma(model, plane, tile=side)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def training_steps(name: str, scale: int) -> str:
    """The steps the bundled file's metadata records, phase by phase ("a + b" when it continued earlier files)."""
    command = read_metadata(weights_path(name, scale))["command"]
    return " + ".join(reversed(re.findall(r"--steps (\d+)", command)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SR_MODELS))
    parser.add_argument("--scales", nargs="+", type=int, default=list(SR_SCALES))
    parser.add_argument("--time-side", type=int, default=512)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pictures = held_out_pictures()
    print("| scale | method | training steps | photos PSNR / SSIM | emoji PSNR / SSIM | parameters | ms per "
          f"{args.time_side}² |")
    print("|---|---|---:|---|---|---|---:|")
    for scale in args.scales:
        rows = [("bicubic", score_upscaler("bicubic", scale, bicubic(scale), pictures), "–", "–", "–")]
        for name in args.models:
            model = load_sr(name, scale)
            params = f"{sum(p.numel() for p in model.parameters()):,}"
            if name.startswith("sesr"):
                params += f" (expanded: {sum(p.numel() for p in build_sr(name, scale).parameters()):,})"
            rows.append((name, score_upscaler(name, scale, with_model(model), pictures), params,
                         f"{milliseconds(model, args.time_side):.0f}", training_steps(name, scale)))
        for name, scores, params, ms, steps in rows:
            by_group = {s.group: s for s in scores}
            cells = [f"{by_group[g].psnr:.2f} / {by_group[g].ssim:.4f}" for g in ("photos", "emoji")]
            print(f"| ×{scale} | {name} | {steps} | {cells[0]} | {cells[1]} | {params} | {ms} |", flush=True)


if __name__ == "__main__":
    main()
