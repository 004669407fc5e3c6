"""The Inspect tab: what the companion networks compute for an uploaded picture, in two views.

Grad-CAM (:func:`linfuse.companions.interpret.grad_cam`): a classifier's five best classes for the picture (resized
to the 64×64 RGB the classifiers read) and where it looks for the top class, or a chosen one. LinearScope
(:func:`linfuse.companions.interpret.output_row`): a ReLU/PReLU network at one input is an affine map f(x) = A·x +
b; one row of A is a picture of which input pixels make one output value, and with what weight. For a SESR companion
(ESPCN's tanh is not piecewise linear) the input is the luma of the picture's centre crop (at most 32×32) and the
output one pixel of the upscaled crop; for a classifier the output is one class score. The view also checks the
decomposition: A·x plus b (the network with its gates frozen at x, applied to zeros) gives the model's own output.

Endpoints: ``/inspect_gradcam`` and ``/inspect_linearscope`` (see app.py's docstring for their inputs and outputs).
"""

import difflib

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw

from ..companions.classify.data import to_batch
from ..companions.interpret import gates_frozen, grad_cam, output_row, overlay, signed_picture
from ..companions.sr import SR_MODELS, SR_SCALES
from ..errors import InvalidArgumentError
from .companions import CONCURRENCY, classifier, sr_model
from .forms import picture_input, picture_output
from .validation import check_choice, check_image, shown_to_people, whole_number_in

TAB_ID = "inspect"
GRADCAM_CLASSIFIERS = ("cnn-svm", "mobilenetv2")  # vae-svm: its VAE features are computed without gradients
CLASSIFIER_SIDE = 64  # the classifiers read 64×64 RGB
TOP = 5
CROP = 32  # the largest LinearScope crop side for SR companions (one backward pass per row: cheap at any size,
#            but a 32×32 picture of weights is what one can still read)
# SESR's activations are PReLU: piecewise linear. ESPCN's are tanh, which LinearScope cannot freeze into gates.
SR_NETWORKS = tuple(f"{name}-x{scale}" for name in SR_MODELS if name.startswith("sesr-") for scale in SR_SCALES)
SCOPE_NETWORKS = (*SR_NETWORKS, *GRADCAM_CLASSIFIERS)
VIEW = 256  # pixels of the longer side of the LinearScope pictures
MARK = (0, 170, 0)


# ---- shared ------------------------------------------------------------------------------------------------------


def classifier_input(image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
    """(x (1, 3, 64, 64) in [0, 1], the 64×64 picture it shows)."""
    small = image.convert("RGB").resize((CLASSIFIER_SIDE, CLASSIFIER_SIDE), Image.BICUBIC)
    return to_batch([small]), small


def class_index(names: list[str], wanted, scores: torch.Tensor) -> int:
    """The class named ``wanted``, or (empty) the top-scoring one."""
    text = wanted.strip() if isinstance(wanted, str) else wanted
    if not text:
        return int(scores.argmax())
    if text in names:
        return names.index(text)
    close = difflib.get_close_matches(str(text), names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(names[:3])}"
    raise InvalidArgumentError(f"class must be empty (the top class) or one of the classifier's {len(names)} class "
                               f"names; got {text!r}: {hint}")


# ---- Grad-CAM ----------------------------------------------------------------------------------------------------


def check_gradcam_classifier(name) -> str:
    if name == "vae-svm":
        raise InvalidArgumentError("classifier must be cnn-svm or mobilenetv2 for Grad-CAM; got 'vae-svm': its "
                                   "features come from the frozen VAE encoder, computed without gradients, so "
                                   "Grad-CAM has no gradient to weigh its activations with")
    return check_choice("classifier", name, GRADCAM_CLASSIFIERS)


def top_classes(scores: torch.Tensor, names: list[str]) -> dict[str, float]:
    """The best classes with the softmax of the scores (SVM margins are not probabilities; the order is theirs)."""
    probabilities = scores[0].double().softmax(dim=0)
    best = probabilities.topk(min(TOP, len(names)))
    return {names[i]: float(p) for p, i in zip(best.values, best.indices, strict=True)}


def score_table(scores: torch.Tensor, names: list[str], explained: int) -> str:
    order = scores[0].argsort(descending=True).tolist()
    rows = ["| rank | class | score |", "|---:|---|---:|"]
    rows += [f"| {rank} | {names[i]} | {float(scores[0, i]):.3f} |" for rank, i in enumerate(order[:TOP], 1)]
    if explained not in order[:TOP]:
        rows.append(f"| {order.index(explained) + 1} | {names[explained]} | {float(scores[0, explained]):.3f} |")
    return (f"Grad-CAM of **{names[explained]}** (red–yellow: where the classifier finds it).\n\n"
            "Raw scores (SVM margins for cnn-svm, logits for mobilenetv2):\n\n" + "\n".join(rows))


def gradcam_view(image, name, wanted):
    """(top classes for gr.Label, overlay picture (64×64), Markdown with the raw scores)."""
    image, name = check_image(image, "image"), check_gradcam_classifier(name)
    model, names = classifier(name)
    x, small = classifier_input(image)
    with torch.no_grad():
        scores = model(x)
    cam, target = grad_cam(model, x, class_index(names, wanted, scores))
    return top_classes(scores, names), overlay(small, cam), score_table(scores, names, target)


# ---- LinearScope -------------------------------------------------------------------------------------------------


def luma_crop(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
    """(the luma of the centre crop, at most CROP×CROP, as (1, 1, h, w) in [0, 1]; the crop's left, top)."""
    luma = np.asarray(image.convert("YCbCr"), dtype=np.float32)[..., 0] / 255.0
    height, width = luma.shape
    h, w = min(CROP, height), min(CROP, width)
    top, left = (height - h) // 2, (width - w) // 2
    crop = np.ascontiguousarray(luma[top:top + h, left:left + w])
    return torch.from_numpy(crop)[None, None], (left, top)


def decomposition(model: torch.nn.Module, x: torch.Tensor, index: int) -> tuple[torch.Tensor, dict]:
    """(row ``index`` of A shaped like x; the numbers: model output, A·x, b, their sum and its error)."""
    with torch.no_grad():
        output = float(model(x).reshape(-1)[index])
    row = output_row(model, x, index)
    with gates_frozen(model, x, torch.float64, "LinearScope") as frozen, torch.no_grad():
        bias = float(frozen(torch.zeros_like(x, dtype=torch.float64)).reshape(-1)[index])
    linear = float((row * x.to(row.dtype)).sum())
    return row, {"model_output": output, "linear_part": linear, "bias": bias, "reconstruction": linear + bias,
                 "error": abs(linear + bias - output)}


def enlarged(picture: Image.Image, mark: tuple[int, int] | None = None) -> Image.Image:
    """``picture`` enlarged (nearest) to VIEW pixels on its longer side, with input pixel ``mark`` outlined."""
    factor = max(1, VIEW // max(picture.size))
    big = picture.convert("RGB").resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    if mark is not None:
        left, top = mark[0] * factor, mark[1] * factor  # the outline just around that pixel, within the picture
        box = (max(0, left - 1), max(0, top - 1), min(big.width - 1, left + factor), min(big.height - 1, top + factor))
        ImageDraw.Draw(big).rectangle(box, outline=MARK)
    return big


def sr_scope(network: str, image: Image.Image, x, y) -> tuple[torch.Tensor, dict, Image.Image, tuple]:
    name, scale = network.rsplit("-x", 1)
    scale = int(scale)
    crop, (left, top) = luma_crop(image)
    h, w = crop.shape[-2:]
    size = f"{w * scale}×{h * scale} upscaled crop"
    column = whole_number_in("x", x, 0, w * scale - 1, f"a column of the {size}")
    line = whole_number_in("y", y, 0, h * scale - 1, f"a row of the {size}")
    model = sr_model(name, scale)  # on the CPU: LinearScope computes in float64
    row, numbers = decomposition(model, crop, line * w * scale + column)
    described = {"network": f"{name} ×{scale}", "input": f"the {w}×{h} luma crop at ({left}, {top}) of the picture",
                 "output": f"pixel ({column}, {line}) of the {size}, before clamping to [0, 1]"}
    view = Image.fromarray((crop[0, 0].numpy() * 255).round().astype(np.uint8))
    return row, described | numbers, view, (column // scale, line // scale)


def classifier_scope(network: str, image: Image.Image, wanted) -> tuple[torch.Tensor, dict, Image.Image, None]:
    model, names = classifier(network)
    x, small = classifier_input(image)
    with torch.no_grad():
        target = class_index(names, wanted, model(x))
    row, numbers = decomposition(model, x, target)
    described = {"network": network, "input": "the picture resized to 64×64 RGB",
                 "output": f"the score of class {names[target]!r}"}
    return row, described | numbers, small, None


def scope_summary(report: dict) -> str:
    return (f"**{report['network']}**, {report['output']}: the model gives **{report['model_output']:.6f}**; "
            f"A·x = {report['linear_part']:.6f} plus b = {report['bias']:.6f} (the network with its gates frozen at "
            f"this input, applied to zeros) makes **{report['reconstruction']:.6f}**, off by {report['error']:.1e}."
            "\n\nThe row of A: red input pixels raise this output, blue ones lower it (weights summed over "
            "channels; white: no effect, e.g. outside the receptive field).")


def linearscope_view(image, network, x, y, wanted):
    """(row picture, input picture, Markdown summary, the numbers as a dict)."""
    image = check_image(image, "image")
    if isinstance(network, str) and network.startswith("espcn"):
        raise InvalidArgumentError(f"network must be a SESR companion or a classifier for LinearScope; got "
                                   f"{network!r}: ESPCN's tanh activations are not piecewise linear")
    network = check_choice("network", network, SCOPE_NETWORKS)
    if network in SR_NETWORKS:
        row, report, view, mark = sr_scope(network, image, x, y)
    else:
        row, report, view, mark = classifier_scope(network, image, wanted)
    return enlarged(signed_picture(row), mark), enlarged(view, mark), scope_summary(report), report


# ---- layout ------------------------------------------------------------------------------------------------------


def gradcam_panel():
    with gr.Row():
        with gr.Column():
            name = gr.Dropdown(list(GRADCAM_CLASSIFIERS), value=GRADCAM_CLASSIFIERS[0], label="classifier",
                               elem_id=f"{TAB_ID}-classifier", allow_custom_value=True,  # our message, not gradio's
                               info="vae-svm cannot be explained: its VAE features are computed without gradients")
            wanted = gr.Textbox("", label="class", elem_id=f"{TAB_ID}-class",
                                info="a class name to explain, e.g. chestnut; empty: the top class")
            button = gr.Button("Classify and explain", variant="primary", elem_id=f"{TAB_ID}-gradcam-button")
        with gr.Column():
            labels = gr.Label(num_top_classes=TOP, label="top classes (softmax of the scores)",
                              elem_id=f"{TAB_ID}-labels")
            picture = picture_output(f"{TAB_ID}-gradcam", "Grad-CAM overlay (64×64, what the classifier sees)")
            scores = gr.Markdown(elem_id=f"{TAB_ID}-scores")
    return [name, wanted], button, [labels, picture, scores]


def linearscope_panel():
    with gr.Row():
        with gr.Column():
            network = gr.Dropdown(list(SCOPE_NETWORKS), value="sesr-m5-x2", label="network",
                                  elem_id=f"{TAB_ID}-network", allow_custom_value=True,
                                  info="a SESR companion <model>-x<scale> (the picture's centre luma crop, at most "
                                       f"{CROP}×{CROP}), or a classifier (the picture at 64×64)")
            with gr.Row():
                x = gr.Number(CROP, label="x", elem_id=f"{TAB_ID}-x",
                              info="SR: the output pixel's column in the upscaled crop, from 0")
                y = gr.Number(CROP, label="y", elem_id=f"{TAB_ID}-y",
                              info="SR: its row, from 0")
            wanted = gr.Textbox("", label="class", elem_id=f"{TAB_ID}-scope-class",
                                info="classifier: the class score to explain; empty: the top class")
            button = gr.Button("Show the row", variant="primary", elem_id=f"{TAB_ID}-linearscope-button")
        with gr.Column():
            row = picture_output(f"{TAB_ID}-row", "row of A: the input weights of this output")
            view = picture_output(f"{TAB_ID}-view", "the input (SR: luma crop; green: the output pixel's place)")
            summary = gr.Markdown(elem_id=f"{TAB_ID}-summary")
            numbers = gr.JSON(label="the numbers", elem_id=f"{TAB_ID}-numbers")
    return [network, x, y, wanted], button, [row, view, summary, numbers]


def build(ctx) -> None:
    """Add the Inspect tab; call inside the app's ``gr.Tabs()``."""
    with gr.Tab("Inspect", id=TAB_ID):
        image = picture_input(TAB_ID, "picture to inspect (e.g. a generated emoji)")
        with gr.Tabs():
            with gr.Tab("Grad-CAM", id=f"{TAB_ID}-gradcam-tab"):
                gradcam_inputs, gradcam_button, gradcam_outputs = gradcam_panel()
            with gr.Tab("LinearScope", id=f"{TAB_ID}-linearscope-tab"):
                scope_inputs, scope_button, scope_outputs = linearscope_panel()

    gradcam_button.click(shown_to_people(gradcam_view), [image, *gradcam_inputs], gradcam_outputs,
                         api_name="inspect_gradcam", **CONCURRENCY)
    scope_button.click(shown_to_people(linearscope_view), [image, *scope_inputs], scope_outputs,
                       api_name="inspect_linearscope", **CONCURRENCY)
