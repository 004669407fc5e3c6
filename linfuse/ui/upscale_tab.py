"""The Upscale tab: super-resolution of an uploaded picture with a bundled SR companion (luma by the network, in
tiles; chroma bicubic: :func:`linfuse.companions.sr.upscale_image`), or plain bicubic resampling for comparison.

Endpoint: ``/upscale`` (see app.py's docstring for its inputs and outputs).
"""

import time

import gradio as gr
from PIL import Image

from ..companions.sr import SR_MODELS, SR_SCALES, upscale_image
from ..errors import InvalidArgumentError
from ..pipelines.parameters import MAX_SIZE
from .companions import CONCURRENCY, sr_model
from .forms import picture_input
from .results import PROGRESS, finish_picture
from .validation import as_int, check_choice, check_image, shown_to_people, whole_number_in

TAB_ID = "upscale"
UPSCALERS = ("bicubic", *SR_MODELS)
DEFAULT_UPSCALER = "sesr-m5"
MIN_TILE, MAX_TILE, DEFAULT_TILE = 16, 4096, 256


def check_form(image, model, scale, tile) -> tuple[Image.Image, str, int, int]:
    image = check_image(image, "image")
    model = check_choice("model", model, UPSCALERS)
    scale = check_choice("scale", as_int("scale", scale), SR_SCALES)
    tile = whole_number_in("tile", tile, MIN_TILE, MAX_TILE, "input pixels per tile; the output is the same")
    if max(image.size) * scale > MAX_SIZE:
        raise InvalidArgumentError(f"image is {image.width}x{image.height}: ×{scale} would make "
                                   f"{image.width * scale}x{image.height * scale}, beyond {MAX_SIZE} pixels a side; "
                                   "use a smaller picture or scale")
    return image, model, scale, tile


def upscaled(ctx, image: Image.Image, model: str, scale: int, tile: int) -> Image.Image:
    size = (image.width * scale, image.height * scale)
    if model == "bicubic":
        return image.resize(size, Image.BICUBIC)
    network = sr_model(model, scale, ctx.models.device)  # a missing weight file: LinfuseError naming train-sr
    return upscale_image(image, network, tile=tile, progress=True)  # its tile bar is tqdm, followed by gr.Progress


def upscale(ctx, image, model, scale, tile, history, progress):
    """Validate, upscale, save: (image file, PNG download, summary, history, gallery)."""
    image, model, scale, tile = check_form(image, model, scale, tile)
    progress(0, desc=f"{model} ×{scale}")
    started = time.perf_counter()
    result = upscaled(ctx, image, model, scale, tile)
    seconds = time.perf_counter() - started
    text = f"upscaled ×{scale} with {model}: {image.width}×{image.height} → {result.width}×{result.height}"
    path, png, history, gallery = finish_picture(ctx, result, f"{model}-x{scale}", text, history)
    return path, png, f"{text} in {seconds:.2f} s", history, gallery


def build(ctx) -> None:
    """Add the Upscale tab; call inside the app's ``gr.Tabs()``."""
    with gr.Tab("Upscale", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                image = picture_input(TAB_ID)
                with gr.Row():
                    model = gr.Dropdown(list(UPSCALERS), value=DEFAULT_UPSCALER, label="model",
                                        elem_id=f"{TAB_ID}-model", allow_custom_value=True,  # check_form words it
                                        info="an SR companion, or bicubic to compare")
                    scale = gr.Dropdown(list(SR_SCALES), value=SR_SCALES[0], label="scale", elem_id=f"{TAB_ID}-scale",
                                        allow_custom_value=True, info="×2 or ×4 per side")
                    tile = gr.Number(DEFAULT_TILE, label="tile", elem_id=f"{TAB_ID}-tile",
                                     info=f"input pixels per tile, {MIN_TILE} to {MAX_TILE}: bounds the memory, "
                                          "not the result")
                button = gr.Button("Upscale", variant="primary", elem_id=f"{TAB_ID}-button")
            with gr.Column():
                output = gr.Image(label="upscaled", type="filepath", format="png", interactive=False, height=384,
                                  elem_id=f"{TAB_ID}-output", elem_classes=["linfuse-image", "linfuse-output"])
                summary = gr.Textbox(label="result", interactive=False, elem_id=f"{TAB_ID}-summary")
                download = gr.File(label="PNG", interactive=False, elem_id=f"{TAB_ID}-download")

    @shown_to_people
    def run(image, model, scale, tile, history, progress=PROGRESS):
        return upscale(ctx, image, model, scale, tile, history, progress)

    button.click(run, [image, model, scale, tile, ctx.history], [output, download, summary, ctx.history,
                                                                   ctx.gallery], api_name="upscale", **CONCURRENCY)
