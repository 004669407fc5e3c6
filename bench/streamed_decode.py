"""Peak resident memory and time of the final decode of one image of the bundled student: the canvas decode
(``to_pil(tiled_decode(...))``, as before row streaming) against the streamed one (``decode_images``: a PIL image
filled band by band; ``decode_to_png``: the PNG written while decoding).

Each mode runs in a fresh process: load the student, draw the latents, reset VmHWM (``bench/procstat.py``), decode,
and report the peak above the resident size before the decode, with the preflight's figure for the stage
(:func:`linfuse.pipelines.preflight.decode_bytes`, tile included; for the canvas, the canvas and 8-bit
image the preflight counted before streaming). Saving is part of every mode (``save_png`` for
the in-memory ones), as ``linfuse generate`` does it.

    PYTHONPATH=$PWD python bench/streamed_decode.py --size 2048
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("canvas", "image", "png")


def run_mode(mode: str, size: int, out: str) -> dict:
    import torch

    from bench.procstat import memory_kib, reset_peak
    from linfuse.pipelines import GenerationParams, load_pipeline, save_png
    from linfuse.pipelines.highres import HighResOptions, decode_images, decode_to_png, to_pil
    from linfuse.pipelines.preflight import CANVAS_BYTES_PER_PIXEL, decode_bytes, memory_model_for
    from linfuse.pipelines.tiled_vae import tiled_decode

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pipe = load_pipeline(None, device="cpu")
    options, factor = HighResOptions(), pipe.vae_scale_factor
    latents = torch.randn(1, 4, size // factor, size // factor, generator=torch.Generator().manual_seed(0))
    params = GenerationParams(prompt="bench", width=size, height=size)
    tile_bytes = memory_model_for(pipe).vae_tile_memory(options.vae_tile, 1, "decode")[0]
    predicted = tile_bytes + (size * size * (CANVAS_BYTES_PER_PIXEL + 3) if mode == "canvas" else  # as counted before
                              decode_bytes(size, size, factor, options.vae_tile, to_file=mode == "png"))
    base = reset_peak()
    start = time.perf_counter()
    if mode == "canvas":
        save_png(to_pil(tiled_decode(pipe.vae, latents, tile=options.vae_tile, overlap=options.vae_overlap))[0],
                 out, params)
    elif mode == "image":
        save_png(decode_images(pipe, latents, options)[0], out, params)
    else:
        decode_to_png(pipe, latents, options, out)
    seconds = time.perf_counter() - start
    return {"mode": mode, "size": size, "seconds": round(seconds, 2),
            "peak_above_base_mib": round((memory_kib("VmHWM") - base) / 1024, 1),
            "predicted_mib": round(predicted / 2**20, 1), "base_rss_mib": round(base / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(run_mode(args.child, args.size, str(Path(folder) / "out.png"))))
        return
    for mode in args.modes.split(","):
        done = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", mode], check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
