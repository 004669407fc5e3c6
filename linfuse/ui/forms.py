"""The input and output widgets every generating tab has, built the same way in each (elem_ids prefixed by tab)."""

from dataclasses import dataclass

import gradio as gr

from ..pipelines.parameters import MAX_SEED, MAX_SIZE, MAX_STEPS
from .validation import method_choices, refused, unreadable_picture

MODEL_CHOICES = {"bundled student": "student", "bundled teacher": "teacher", "bundled DiT student": "dit-student",
                 "bundled DiT teacher": "dit-teacher", "local path or Hub id": ""}
DEFAULT_PROMPT = "red apple on a blue background"
BUNDLED_GUIDANCE = 5.0


@dataclass
class GenerationForm:
    prompt: gr.Textbox
    negative: gr.Textbox
    width: gr.Number
    height: gr.Number
    steps: gr.Number
    guidance: gr.Number
    seed: gr.Number
    model: gr.Textbox
    method: gr.Dropdown
    preflight: gr.Markdown
    model_picked: object  # the event of a bundled model picked in the radio (the estimate runs after it)

    def inputs(self) -> list:
        """The inputs of the /generate and /highres endpoints, in their API order."""
        return [self.prompt, self.negative, self.width, self.height, self.steps, self.guidance, self.seed,
                self.model, self.method]

    def estimate_inputs(self) -> list:
        """The inputs of the /estimate endpoint, in its API order."""
        return [self.width, self.height, self.guidance, self.model, self.method]

    def estimate_triggers(self) -> list:
        """Every change that alters the memory estimate (the model box only once typing is done)."""
        return [self.width.change, self.height.change, self.guidance.change, self.method.change,
                self.model.submit, self.model.blur]


@dataclass
class ResultArea:
    image: gr.Image
    parameters: gr.Textbox
    download: gr.File

    def outputs(self) -> list:
        return [self.image, self.parameters, self.download]


def size_inputs(prefix: str, side: int, info: str | None = None) -> tuple[gr.Number, gr.Number]:
    # No gr.Number(precision=0) for whole numbers in this UI: it rounds 64.5 to 64 before the checks see it.
    info = info or f"pixels, a multiple of 8 from 8 to {MAX_SIZE}"
    width = gr.Number(side, label="width", info=info, step=8, elem_id=f"{prefix}-width")
    height = gr.Number(side, label="height", info=info, step=8, elem_id=f"{prefix}-height")
    return width, height


def model_inputs(prefix: str) -> tuple[gr.Textbox, gr.Dropdown, object]:
    """A quick choice of the bundled models that fills the model box; the box (what the API takes) also accepts a
    local pipeline folder or a Hub id."""
    choice = gr.Radio(list(MODEL_CHOICES), value="bundled student", label="model", elem_id=f"{prefix}-model-choice")
    model = gr.Textbox("student", label="model name, folder or Hub id", elem_id=f"{prefix}-model",
                       info="'student' / 'teacher' (bundled UNets, 64×64), 'dit-student' / 'dit-teacher' (bundled "
                            "FLUX-style DiTs, 128×128), a diffusers pipeline folder, or owner/name")
    # allow_custom_value: a wrong name reaches check_method, whose message names the parameter (gradio's does not)
    method = gr.Dropdown(method_choices(), value="auto", label="attention method", elem_id=f"{prefix}-method",
                         info="auto: softmax for the bundled teachers, clear for FLUX/SD3/PixArt, linfusion "
                              "otherwise; none: softmax",
                         allow_custom_value=True)
    picked = choice.input(lambda name, current: MODEL_CHOICES.get(name) or current, [choice, model], model,
                          api_visibility="private", queue=False)
    model.input(lambda text: next((k for k, v in MODEL_CHOICES.items() if v and v == text.strip()),
                                  "local path or Hub id"), model, choice, api_visibility="private", queue=False)
    return model, method, picked


def generation_form(prefix: str, *, side: int = 64, steps: int = 25, size_info: str | None = None) -> GenerationForm:
    """Prompt, size, sampling and model inputs, plus the preflight display; call inside a gr.Tab."""
    prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt", lines=2, elem_id=f"{prefix}-prompt")
    negative = gr.Textbox("", label="negative prompt", elem_id=f"{prefix}-negative")
    with gr.Row():
        width, height = size_inputs(prefix, side, size_info)
    with gr.Row():
        steps_box = gr.Number(steps, label="steps", info=f"1 to {MAX_STEPS}", elem_id=f"{prefix}-steps")
        guidance = gr.Number(BUNDLED_GUIDANCE, label="guidance", info="0 to 100; 5 suits the bundled models, 7.5 SD",
                             elem_id=f"{prefix}-guidance")
        seed = gr.Number(0, label="seed", info=f"0 to {MAX_SEED}", elem_id=f"{prefix}-seed")
    model, method, picked = model_inputs(prefix)
    preflight = gr.Markdown("*Memory preflight: waiting for the model…*", label="memory preflight",
                            elem_id=f"{prefix}-preflight", render=False)  # the tab places it: form.preflight.render()
    return GenerationForm(prompt, negative, width, height, steps_box, guidance, seed, model, method, preflight, picked)


def decoded_uploads(preprocess, name: str):
    """Wrap a gr.Image's ``preprocess`` so that the upload is decoded in full when it arrives: a truncated or
    unreadable file is answered with what is wrong with it (a gr.Error naming the input, one log line), not
    gradio's generic "could not preprocess". (Not a gr.Image subclass: gradio writes a .pyi next to those.)"""

    def decode(payload):
        try:
            image = preprocess(payload)
            if image is not None:
                image.load()  # PIL decodes lazily: a truncated file fails here, not inside a handler
            return image
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever PIL raises on a bad file, said in words
            raise refused(unreadable_picture(name, exc), "an upload") from exc

    return decode


def picture_input(prefix: str, label: str = "input picture") -> gr.Image:
    """An uploaded picture, handed to the handler as an RGB PIL image (None when empty)."""
    picture = gr.Image(label=label, type="pil", image_mode="RGB", sources=["upload", "clipboard"], height=320,
                       elem_id=f"{prefix}-input", elem_classes=["linfuse-image"])
    picture.preprocess = decoded_uploads(picture.preprocess, label)
    return picture


def picture_output(elem_id: str, label: str, height: int = 320) -> gr.Image:
    """A picture the handler returns (PIL or a file path), shown with its pixels sharp and sent as PNG."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=height, elem_id=elem_id,
                    elem_classes=["linfuse-image", "linfuse-output"])


def result_area(prefix: str) -> ResultArea:
    image = gr.Image(label="image", type="filepath", format="png", interactive=False, height=384,
                     elem_id=f"{prefix}-output", elem_classes=["linfuse-image", "linfuse-output"])
    parameters = gr.Textbox(label="parameters (as stored in the PNG)", lines=3, interactive=False,
                            elem_id=f"{prefix}-parameters")
    download = gr.File(label="PNG with its parameters", interactive=False, elem_id=f"{prefix}-download")
    return ResultArea(image, parameters, download)
