"""The Generate tab: text to image, plain up to twice the model's native size and progressive above (as
``linfuse generate --highres auto``), with the memory preflight shown as the size and model change.

Endpoints: ``/generate`` and ``/estimate`` (see app.py's docstring for their inputs and outputs).
"""

import gradio as gr

from ..pipelines import HighResOptions, describe_run, generate
from ..pipelines.highres import checked_stages
from ..pipelines.text2image import denoiser_setting
from .forms import generation_form, result_area
from .jobs import JOB_EVENT, denoising, progressive_image
from .preflight import estimate_markdown, is_progressive
from .results import PROGRESS, finish, step_progress
from .validation import check_method, check_model, check_params, shown_to_people

TAB_ID = "generate"


def generate_image(ctx, prompt, negative, width, height, steps, guidance, seed, model, method, history, progress):
    """Validate, load (cached), plan the memory, then generate (holding the denoiser: :mod:`.jobs`) and save: the
    outputs of :func:`linfuse.ui.results.finish`."""
    params = check_params(prompt, negative, width, height, steps, guidance, seed)
    model, method = check_model(model), check_method(method)
    progress(0, desc=f"loading {model}")
    loaded = ctx.models.get(model, method)
    describe_run(loaded.pipe, params, model=model, weights=loaded.key.weights or "")
    if is_progressive(loaded, params.width, params.height):
        progress(0, desc="progressive generation: checks and memory preflight")
        options = HighResOptions(memory_limit=ctx.settings.memory_limit, memory=ctx.settings.memory_mode)
        # refuses, before any work, too few steps for a refinement, softmax beyond its limit, a job that won't fit
        stages = checked_stages(loaded.pipe, params, options)
        with denoising(ctx, progress):
            image = progressive_image(loaded.pipe, params, options, stages)
        return finish(ctx, image, params, history, extra="progressive, latent upscaling")
    # the preflight, before the wait for the denoiser; generate() finds its traces kept
    denoiser_setting(loaded.pipe, params, ctx.settings.memory_mode, ctx.settings.memory_limit,
                     check_memory=ctx.settings.memory_limit is not None)
    with denoising(ctx, progress):
        image = generate(loaded.pipe, params, progress=False, callback_on_step_end=step_progress(progress),
                         memory=ctx.settings.memory_mode, memory_limit=ctx.settings.memory_limit)
    return finish(ctx, image, params, history)


def build(ctx) -> None:
    """Add the Generate tab; call inside the app's ``gr.Tabs()``."""
    with gr.Tab("Generate", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                form = generation_form(TAB_ID)
                form.preflight.render()
                button = gr.Button("Generate image", variant="primary", elem_id="generate-button")
            with gr.Column():
                area = result_area(TAB_ID)

    @shown_to_people
    def run(prompt, negative, width, height, steps, guidance, seed, model, method, history,
            progress=PROGRESS):
        return generate_image(ctx, prompt, negative, width, height, steps, guidance, seed, model, method, history,
                              progress)

    def estimate(width, height, guidance, model, method):
        return estimate_markdown(ctx.models, width, height, guidance, model, method,
                                 memory_limit=ctx.settings.memory_limit, memory=ctx.settings.memory_mode)

    button.click(run, [*form.inputs(), ctx.history], [*area.outputs(), ctx.history, ctx.gallery],
                 api_name="generate", **JOB_EVENT)
    form.prompt.submit(run, [*form.inputs(), ctx.history], [*area.outputs(), ctx.history, ctx.gallery],
                       api_visibility="private", **JOB_EVENT)
    preflight = {"inputs": form.estimate_inputs(), "outputs": form.preflight, "show_progress": "minimal",
                 "concurrency_id": "preflight", "concurrency_limit": 1}
    gr.on([*form.estimate_triggers(), ctx.blocks.load], estimate, api_name="estimate", trigger_mode="always_last",
          **preflight)
    form.model_picked.then(estimate, api_visibility="private", **preflight)
