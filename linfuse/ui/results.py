"""What happens to a finished image: a PNG with its parameters (``save_png``; pictures that no prompt made, such as
upscaled ones, carry a description instead), a caption, the session's gallery, and the per-step progress display
while it is being made."""

import itertools
import threading
import time
from pathlib import Path

import gradio as gr
from PIL import Image, PngImagePlugin

from ..fileio import atomic_write
from ..pipelines import GenerationParams, save_png

# The default of a handler's `progress` argument: gradio gives each call its own tracker; track_tqdm also shows
# tqdm bars run inside (pipeline loading, the high-res stages).
PROGRESS = gr.Progress(track_tqdm=True)

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def new_path(outdir: Path, label: str) -> Path:
    """A new file name in ``outdir``: time, a running number (unique within this server), ``label``."""
    with _counter_lock:
        number = next(_counter)
    return Path(outdir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{number:05d}-{label}.png"


def output_path(outdir: Path, params: GenerationParams) -> Path:
    """A new file name in ``outdir`` for a generated image: time, running number, seed."""
    return new_path(outdir, f"seed{params.seed}")


def caption(params: GenerationParams, extra: str = "") -> str:
    """One line with every parameter needed to make the image again."""
    parts = [repr(params.prompt)]
    if params.negative_prompt:
        parts.append(f"negative {params.negative_prompt!r}")
    parts += [f"{params.width}×{params.height}", f"{params.steps} steps", f"CFG {params.guidance:g}",
              f"seed {params.seed}", f"model {params.model}", f"attention {params.method}"]
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def remember(history, path: Path, text: str, keep: int) -> list[tuple[str, str]]:
    """The gallery's new content: this image first, then the earlier ones, at most ``keep``."""
    return [(str(path), text), *(history or [])][:keep]


def finish(ctx, image, params: GenerationParams, history, extra: str = ""):
    """Save the PNG (parameters embedded) and return the outputs every generating tab has, in this order:
    image file, parameters text, PNG download, history, gallery."""
    path = save_png(image, output_path(ctx.settings.outdir, params), params)
    history = remember(history, path, caption(params, extra), ctx.settings.history)
    return str(path), params.to_text(), str(path), history, history


def finish_picture(ctx, image: Image.Image, label: str, text: str, history):
    """Save a picture that no prompt made (an upscaled one, …) as a PNG whose Description is ``text``, and add it
    to the gallery with ``text`` as its caption. Returns: image file, PNG download, history, gallery."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", text)
    path = atomic_write(new_path(ctx.settings.outdir, label),
                        lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    history = remember(history, path, text, ctx.settings.history)
    return str(path), str(path), history, history


def step_progress(progress, desc: str = "denoising"):
    """A diffusers ``callback_on_step_end`` that moves a ``gr.Progress`` bar one step per denoising step."""

    def callback(pipe, index: int, timestep, tensors: dict) -> dict:
        progress((index + 1, len(pipe.scheduler.timesteps)), desc=desc, unit="steps")
        return tensors

    return callback
