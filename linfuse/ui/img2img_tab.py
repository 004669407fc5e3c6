"""The Img2Img tab: SDEdit of an uploaded picture towards a prompt (:func:`linfuse.pipelines.img2img.img2img`), at
the picture's own size rounded down to multiples of 8, or at a given width × height, with the tiled VAE.

Endpoint: ``/img2img`` (see app.py's docstring for its inputs and outputs).
"""

import gradio as gr

from ..errors import InvalidArgumentError
from ..pipelines import HighResOptions, describe_run
from ..pipelines.img2img import check_steps, check_strength, img2img, target_size
from ..pipelines.plan import Stage
from ..pipelines.preflight import estimate_memory
from .forms import generation_form, picture_input, result_area
from .jobs import JOB_EVENT, denoising
from .results import PROGRESS, finish
from .validation import (
    as_float,
    as_int,
    check_image,
    check_method,
    check_model,
    check_params,
    check_size,
    shown_to_people,
)

TAB_ID = "img2img"
DEFAULT_STRENGTH = 0.5
SIZE_INFO = "0 and 0: the input's own size, rounded down to multiples of 8; else a multiple of 8 from 8 to 16384"


def check_target(image, width, height) -> tuple[int, int]:
    """The size to work at: (0, 0) means the picture's own, rounded down to multiples of 8."""
    width, height = as_int("width", width), as_int("height", height)
    if width == height == 0:
        return target_size(image, None)
    if 0 in (width, height):
        raise InvalidArgumentError(f"width and height must both be 0 (the input's own size) or both be set; got "
                                   f"{width}x{height}")
    return check_size(width, height)


def check_form(image, prompt, negative, strength, steps, guidance, seed, width, height):
    """(picture, parameters at the size to work at, strength), everything checked before a model is loaded."""
    image = check_image(image, "image")
    strength = check_strength(as_float("strength", strength))
    params = check_params(prompt, negative, *check_target(image, width, height), steps, guidance, seed)
    check_steps(params.steps, strength)
    return image, params, strength


def img2img_image(ctx, image, prompt, negative, strength, steps, guidance, seed, model, method, width, height,
                  history, progress):
    """Validate, load (cached), run SDEdit, save: the outputs of :func:`linfuse.ui.results.finish`."""
    image, params, strength = check_form(image, prompt, negative, strength, steps, guidance, seed, width, height)
    model, method = check_model(model), check_method(method)
    progress(0, desc=f"loading {model}")
    loaded = ctx.models.get(model, method)
    describe_run(loaded.pipe, params, model=model, weights=loaded.key.weights or "")
    progress(0, desc="memory preflight")
    options = HighResOptions(memory_limit=ctx.settings.memory_limit, memory=ctx.settings.memory_mode)
    # the preflight's traces, made here beside other requests; img2img's own preflight then finds them kept
    estimate_memory(loaded.pipe, [Stage(params.width, params.height, strength)], guidance=params.guidance > 1.0,
                    tile=options.vae_tile, limit=options.memory_limit, memory=options.memory)
    with denoising(ctx, progress):  # its denoising bar is tqdm, followed by gr.Progress
        result = img2img(loaded.pipe, image, params, strength, size=(params.width, params.height), options=options)
    extra = f"img2img strength {strength:g} from a {image.width}×{image.height} picture"
    return finish(ctx, result, params, history, extra=extra)


def build(ctx) -> None:
    """Add the Img2Img tab; call inside the app's ``gr.Tabs()``."""
    with gr.Tab("Img2Img", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                image = picture_input(TAB_ID)
                form = generation_form(TAB_ID, side=0, steps=20, size_info=SIZE_INFO)
                strength = gr.Number(DEFAULT_STRENGTH, label="strength", elem_id=f"{TAB_ID}-strength",
                                     info="in (0, 1]: 0.2 keeps the layout and retouches detail, 0.8 keeps mostly "
                                          "the colours; int(steps × strength) steps run (at least 1)")
                button = gr.Button("Transform image", variant="primary", elem_id=f"{TAB_ID}-button")
            with gr.Column():
                area = result_area(TAB_ID)

    @shown_to_people
    def run(image, prompt, negative, strength, steps, guidance, seed, model, method, width, height, history,
            progress=PROGRESS):
        return img2img_image(ctx, image, prompt, negative, strength, steps, guidance, seed, model, method, width,
                             height, history, progress)

    inputs = [image, form.prompt, form.negative, strength, form.steps, form.guidance, form.seed, form.model,
              form.method, form.width, form.height, ctx.history]
    button.click(run, inputs, [*area.outputs(), ctx.history, ctx.gallery], api_name="img2img", **JOB_EVENT)
