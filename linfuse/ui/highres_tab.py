"""The High-res tab: progressive generation with explicit :class:`~linfuse.pipelines.HighResOptions` (a base image
at the native size, then ×2 upscale and SDEdit refinement per stage, tiled VAE), up to 16384×16384.

Endpoints: ``/highres`` and ``/estimate_highres`` (see app.py's docstring for their inputs and outputs).
"""

import gradio as gr

from ..pipelines import describe_run
from ..pipelines.highres import MAX_SKIP_RESIDUAL, UPSCALE_MODES, checked_stages
from ..pipelines.preflight import MEMORY_MODES
from .forms import generation_form, result_area
from .jobs import JOB_EVENT, denoising, progressive_image
from .preflight import estimate_markdown
from .results import PROGRESS, finish
from .validation import (
    check_highres,
    check_method,
    check_model,
    check_params,
    shown_to_people,
)

TAB_ID = "highres"


def highres_image(ctx, prompt, negative, width, height, steps, guidance, seed, model, method, upscale, strengths,
                  skip_residual, memory, ntk_factor, proportional, history, progress):
    """Validate the form, plan the stages (refusing before any work what cannot run: too few steps for a
    refinement's strength, a job that does not fit), then run them holding the denoiser (:mod:`.jobs`)."""
    params = check_params(prompt, negative, width, height, steps, guidance, seed)
    options = check_highres(upscale, strengths, skip_residual, memory, ntk_factor, proportional)
    options.memory_limit = ctx.settings.memory_limit
    model, method = check_model(model), check_method(method)
    progress(0, desc=f"loading {model}")
    loaded = ctx.models.get(model, method)
    describe_run(loaded.pipe, params, model=model, weights=loaded.key.weights or "")
    progress(0, desc="checks and memory preflight")
    stages = checked_stages(loaded.pipe, params, options)
    with denoising(ctx, progress):
        image = progressive_image(loaded.pipe, params, options, stages)
    schedule = ", ".join(f"{s:g}" for s in options.strengths) if options.strengths else "default strengths"
    extra = (f"progressive, {options.upscale} upscaling, {schedule}, skip residual {options.skip_residual:g}, "
             f"memory {options.memory}")
    if options.ntk_factor != 1 or options.proportional_attention:
        state = "on" if options.proportional_attention else "off"
        extra += f", NTK {options.ntk_factor:g}, proportional attention {state}"
    return finish(ctx, image, params, history, extra=extra)


def option_inputs() -> tuple[gr.Dropdown, gr.Textbox, gr.Number, gr.Dropdown]:
    upscale = gr.Dropdown(list(UPSCALE_MODES), value="latent", label="upscale", elem_id=f"{TAB_ID}-upscale",
                          info="latent: bicubic on the latent; pixel: decode, resize, encode (tiled VAE)",
                          allow_custom_value=True)  # so that check_highres, not gradio, words a wrong value
    strengths = gr.Textbox("", label="strengths", elem_id=f"{TAB_ID}-strengths",
                           info="one per ×2 refinement, each in (0, 1), e.g. '0.4, 0.25, 0.1'; empty: 0.4 down to 0.1")
    skip = gr.Number(0, label="skip_residual", elem_id=f"{TAB_ID}-skip-residual",
                     info=f"DemoFusion's skip residual α, 0 (off) to {MAX_SKIP_RESIDUAL:g}; 3 is DemoFusion's")
    memory = gr.Dropdown(list(MEMORY_MODES), value="auto", label="memory", elem_id=f"{TAB_ID}-memory",
                         info="how the UNet runs: lean = one sample at a time, in bands and chunks (8K–16K); auto = "
                              "plain where it fits, else lean", allow_custom_value=True)
    return upscale, strengths, skip, memory


def dit_option_inputs() -> tuple[gr.Number, gr.Checkbox]:
    ntk = gr.Number(1, label="ntk_factor", elem_id=f"{TAB_ID}-ntk-factor",
                    info="FLUX: RoPE base θ·α in the refinements above the native size; 1 = off, CLEAR uses 10")
    proportional = gr.Checkbox(False, label="proportional attention", elem_id=f"{TAB_ID}-proportional",
                               info="CLEAR models: softmax scale for the token count above the native size")
    return ntk, proportional


def build(ctx) -> None:
    """Add the High-res tab; call inside the app's ``gr.Tabs()``."""
    with gr.Tab("High-res", id=TAB_ID):
        with gr.Row():
            with gr.Column():
                form = generation_form(TAB_ID, side=256, steps=20)
                with gr.Row():
                    upscale, strengths, skip, memory = option_inputs()
                with gr.Row():
                    ntk, proportional = dit_option_inputs()
                form.preflight.render()
                button = gr.Button("Generate high-res image", variant="primary", elem_id=f"{TAB_ID}-button")
            with gr.Column():
                area = result_area(TAB_ID)

    @shown_to_people
    def run(prompt, negative, width, height, steps, guidance, seed, model, method, upscale, strengths, skip_residual,
            memory, ntk_factor, proportional, history, progress=PROGRESS):
        return highres_image(ctx, prompt, negative, width, height, steps, guidance, seed, model, method, upscale,
                             strengths, skip_residual, memory, ntk_factor, proportional, history, progress)

    def estimate(width, height, guidance, model, method, upscale, strengths, memory):
        return estimate_markdown(ctx.models, width, height, guidance, model, method, progressive=True,
                                 upscale=upscale, strengths=strengths, memory_limit=ctx.settings.memory_limit,
                                 memory=memory)

    button.click(run, [*form.inputs(), upscale, strengths, skip, memory, ntk, proportional, ctx.history],
                 [*area.outputs(), ctx.history, ctx.gallery], api_name="highres", **JOB_EVENT)
    preflight = {"inputs": [*form.estimate_inputs(), upscale, strengths, memory], "outputs": form.preflight,
                 "show_progress": "minimal", "concurrency_id": "preflight", "concurrency_limit": 1}
    gr.on([*form.estimate_triggers(), upscale.change, strengths.blur, strengths.submit, memory.change,
           ctx.blocks.load], estimate,
          api_name="estimate_highres", trigger_mode="always_last", **preflight)
    form.model_picked.then(estimate, api_visibility="private", **preflight)
