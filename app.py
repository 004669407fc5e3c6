"""linfuse web UI: ``python app.py [--port 7860] [--host 127.0.0.1] [--share]``, then open http://127.0.0.1:7860.

Without --port / --host, Gradio's GRADIO_SERVER_PORT / GRADIO_SERVER_NAME are honoured (a flag wins over them).

Tabs: Generate (text to image; progressive above twice the model's native size), High-res (progressive
generation with explicit options), Img2Img (SDEdit of an uploaded picture at any size), Upscale (the SR companions,
or bicubic to compare) and Inspect (Grad-CAM of the classifiers; LinearScope rows of the SR companions and
classifiers). Generate and High-res show the memory preflight before anything runs. Generated, transformed and
upscaled images land in the gallery below the tabs with their parameters as the caption, and as PNGs carrying them
(``linfuse.pipelines.save_png``; upscaled ones carry a Description).

Endpoints (``gradio_client.Client("http://127.0.0.1:7860").predict(..., api_name="/generate")``); errors in any input
come back as ``gradio_client.exceptions.AppError`` whose message names the parameter and its allowed range:

``/generate``  inputs: prompt (str), negative (str), width (int), height (int), steps (int), guidance (float),
               seed (int), model ('student', 'teacher', a pipeline folder or a Hub id), method ('auto', 'none' or a
               name from ``linfuse.linearize.method_names()``).
               outputs: (image file (PNG), parameters text, PNG file with the parameters embedded, gallery).
``/highres``   inputs: those of /generate, then upscale ('latent' | 'pixel'), strengths (text: one value in (0, 1)
               per ×2 refinement, comma-separated; '' = 0.4 down to 0.1), skip_residual (float, 0 = off, up to 10),
               memory ('auto' | 'plain' | 'lean': how the UNet runs; auto = plain where it fits, else lean),
               ntk_factor (float, 1 = off, up to 100: FLUX's RoPE base θ·α above the native size; CLEAR uses 10),
               proportional_attention (bool: CLEAR's softmax scale for the token count); both optional.
               outputs: as /generate.
``/estimate``  inputs: width, height, guidance, model, method.  output: Markdown text: the memory preflight of the
               job /generate would run (peak MiB, free MiB, fits or not, the largest size of that shape that fits,
               per-stage MiB); problems with the inputs are described in the text instead of raised.
``/estimate_highres``  inputs: width, height, guidance, model, method, upscale, strengths, memory.  output: as
               /estimate, for the job /highres would run (with the UNet mode of each stage).
``/img2img``   inputs: image (``gradio_client.handle_file(path)``), prompt, negative, strength (float in (0, 1]),
               steps, guidance, seed, model, method (as /generate), width, height (int; both 0 = the picture's own
               size rounded down to multiples of 8). int(steps × strength) must be at least 1.
               outputs: as /generate.
``/upscale``   inputs: image, model ('bicubic' or a name from ``linfuse.companions.sr.SR_MODELS``: 'espcn',
               'sesr-m3', 'sesr-m5', 'sesr-m11', 'sesr-xl'), scale (2 | 4), tile (int, 16–4096 input pixels).
               The weights are assets/sr/<model>-x<scale>.safetensors; a missing file is an error naming the
               ``linfuse train-sr`` command that makes it. Output sides up to 16384.
               outputs: (image file (PNG), PNG file, summary text, gallery).
``/inspect_gradcam``  inputs: image, classifier ('cnn-svm' | 'mobilenetv2'; 'vae-svm' is refused: no gradients
               through its frozen VAE features), class (a class name; '' = the top class).
               outputs: (top 5 classes as gr.Label data {"label", "confidences": [{"label", "confidence"}]}, the
               softmax of the scores; Grad-CAM overlay on the 64×64 picture the classifier reads (PNG); Markdown
               table of the raw scores).
``/inspect_linearscope``  inputs: image, network ('<sesr model>-x<scale>', e.g. 'sesr-m5-x2', or 'cnn-svm' |
               'mobilenetv2'), x, y (int: the output pixel in the ×scale upscaled centre crop of at most 32×32
               input pixels; SR only), class ('' = the top class; classifiers only).
               outputs: (row of the affine map at this input as a picture (red positive, blue negative); the input
               (luma crop or 64×64 picture) with the pixel marked; Markdown summary; JSON {network, input, output,
               model_output, linear_part (A·x), bias (b: the gate-frozen network at zero), reconstruction, error}).

Widths and heights are multiples of 8 from 8 to 16384 (whole numbers: 64.5 is refused, not rounded); steps 1–1000;
guidance 0–100; seed 0–2**32−1. Requests that use a diffusion model are checked and their memory planned up to four
at once, then denoise one at a time (linfuse.ui.jobs: a small request does not wait for a large one's planning);
those using the companions run one at a time (queue size ``--queue-size``); loaded pipelines are cached
(``--max-models``), companions while their weight files are unchanged. A refused request (a bad input, an
unreadable upload, a job that does not fit) is answered with what was wrong and logged in one line; a bad or busy
port or address stops the app before it starts, with one line and exit status 2.
"""

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

# Gradio and linfuse.ui (which imports it) are imported where they are used: gradio reads GRADIO_SERVER_PORT when
# it is imported and fails with a traceback on a bad value, which parse_args refuses first, in one line.

# Small images (the bundled models draw 64×64) are shown enlarged, with their pixels sharp.
CSS = """.linfuse-image img { image-rendering: pixelated; }
.linfuse-output img { min-width: 320px; min-height: 320px; object-fit: contain; }"""


def default_tabs() -> list:
    """The tabs, in display order: each is a function build(ctx: UIContext) that adds one gr.Tab (called inside the
    app's gr.Tabs()) and wires its events, using ctx.models (cached pipelines), ctx.history / ctx.gallery (the
    shared gallery, via linfuse.ui.results.finish) and ctx.settings."""
    from linfuse.ui import generate_tab, highres_tab, img2img_tab, inspect_tab, upscale_tab

    return [
        generate_tab.build,
        highres_tab.build,
        img2img_tab.build,
        upscale_tab.build,  # super-resolution
        inspect_tab.build,  # Grad-CAM / LinearScope
    ]


def build_app(settings=None, tabs=None):
    """The whole UI as a gr.Blocks (not launched, no queue set); ``settings``: a linfuse.ui.AppSettings."""
    import gradio as gr

    from linfuse.ui import AppSettings, UIContext

    ctx = UIContext.create(settings or AppSettings())
    with gr.Blocks(title="linfuse", analytics_enabled=False) as demo:
        ctx.blocks = demo
        gr.Markdown("# linfuse\nLinear-attention diffusion. The bundled emoji models draw 64×64 emoji on plain "
                    "backgrounds, e.g. *dog face on a yellow background*.")
        ctx.history = gr.State([])
        ctx.gallery = gr.Gallery(label="this session's images (caption: their parameters)", columns=6, height=280,
                                 object_fit="contain", preview=False, fit_columns=False, format="png",
                                 elem_id="gallery", elem_classes=["linfuse-image"], render=False)
        with gr.Tabs():
            for build in default_tabs() if tabs is None else tabs:
                build(ctx)
        ctx.gallery.render()
    return demo


def fail(message: str):
    """Stop before the server starts: one line on stderr, exit status 2 (as argparse does for a bad flag)."""
    print(f"app.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (in use, an unknown address), or None if it can."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve the address {host!r} (--host or GRADIO_SERVER_NAME): {exc}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                return (f"port {port} on {host} is already in use (another server?); choose another with --port or "
                        "GRADIO_SERVER_PORT")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="linfuse web UI (Gradio)")
    parser.add_argument("--host", default=None, help="address to listen on (0.0.0.0: every interface; default "
                        "GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--weights", default="default",
                        help="linear-attention weights: 'default' (the model folder's own linear_attention/, else "
                             "the published LinFusion weights of a known base model, else the teacher's projections, "
                             "not distilled), 'auto' (the same but refuses the last case), 'none', or a directory / "
                             "Hub id")
    parser.add_argument("--outdir", type=Path, default=None, help="where PNGs are written (default: a temp folder)")
    parser.add_argument("--max-models", type=int, default=2, help="pipelines kept loaded (default 2)")
    parser.add_argument("--queue-size", type=int, default=16, help="requests that may wait (default 16)")
    parser.add_argument("--memory-limit-mib", type=int, default=None,
                        help="memory a job may use, for the preflight (default: what is free)")
    parser.add_argument("--memory-mode", choices=("auto", "plain", "lean"), default="auto",
                        help="how the UNet runs in the Generate and Img2Img tabs: plain, lean (one sample at a time, "
                             "in bands and chunks: 8K-16K) or auto (plain when it fits, else lean); the High-res tab "
                             "has its own control")
    args = parser.parse_args(argv)
    # Gradio's own convention, as every Gradio app honours it; an explicit flag wins.
    args.host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if args.port is None:
        port = os.environ.get("GRADIO_SERVER_PORT", "7860").strip()
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            fail(f"GRADIO_SERVER_PORT must be a port number from 1 to 65535; got {port!r} (or pass --port)")
        args.port = int(port)
    elif not 1 <= args.port <= 65535:
        fail(f"--port must be a port number from 1 to 65535; got {args.port}")
    return args


def settings_from(args: argparse.Namespace):
    from linfuse.ui import AppSettings

    settings = AppSettings(device=args.device, dtype=args.dtype, weights=args.weights, max_models=args.max_models,
                           memory_limit=None if args.memory_limit_mib is None else args.memory_limit_mib * 2**20,
                           memory_mode=args.memory_mode)
    if args.outdir is not None:
        settings.outdir = args.outdir
    return settings


def queued(demo, queue_size: int = 16):
    """The app's queue: one request at a time per event unless the event says otherwise (linfuse.ui.jobs)."""
    return demo.queue(default_concurrency_limit=1, max_size=queue_size)


def log_refusals() -> None:
    """Requests the UI refuses (linfuse.ui.validation.refused) are logged one line each, with the time."""
    logger = logging.getLogger("linfuse.ui")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv=None) -> None:
    args = parse_args(argv)
    problem = port_problem(args.host, args.port)
    if problem:
        fail(problem)
    os.environ["GRADIO_SERVER_PORT"] = str(args.port)  # a flag wins over a bad variable, which gradio reads too
    from linfuse.errors import LinfuseError
    from linfuse.notices import quiet_third_party_notices

    quiet_third_party_notices()
    log_refusals()
    try:
        settings = settings_from(args)
        demo = build_app(settings)
    except LinfuseError as exc:  # e.g. --device cuda without a GPU, a bad --dtype: say so, exit with status 2
        fail(str(exc))
    queued(demo, args.queue_size)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                    allowed_paths=[str(settings.outdir)], ssr_mode=False, css=CSS)
    except OSError as exc:  # taken between the check and the launch: gradio says "Cannot find empty port"
        fail(f"cannot listen on {args.host}:{args.port}: {exc}; choose another port with --port")


if __name__ == "__main__":
    main()
