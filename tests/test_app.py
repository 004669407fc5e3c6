"""The web UI (app.py) through its API, as gradio_client sees it, with the bundled student; plus the UI's own checks.

The server is a real ``python app.py`` subprocess (tests/app_server.py), shared with tests/test_app_browser.py.
"""

import app_server
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from linfuse.companions.classify import load_classifier
from linfuse.companions.sr import load_sr
from linfuse.distill.emoji import EmojiComposition, EmojiSource
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, largest_fitting_size, read_png_parameters
from linfuse.ui import preflight
from linfuse.ui.models import LoadedModel, ModelKey
from linfuse.ui.validation import check_params, check_size, parse_strengths

STUDENT_64 = ("red apple on a blue background", "", 64, 64, 4, 5.0, 0, "student", "auto")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    yield app_server.shared(tmp_path_factory)
    app_server.stop_shared()


@pytest.fixture(scope="session")
def app_url(server):
    return server.url


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def emoji():
    """A 64×64 render of class 0, 'chestnut', on white: what the classifiers were trained on."""
    return EmojiSource(EmojiComposition(resolution=64)).render(0, "white")


@pytest.fixture(scope="module")
def emoji_file(emoji, tmp_path_factory):
    path = tmp_path_factory.mktemp("pictures") / "chestnut.png"
    emoji.save(path)
    return path


def saved(picture: Image.Image, path) -> str:
    picture.save(path)
    return handle_file(str(path))


def test_generate_returns_a_64x64_png_with_its_parameters(client):
    image, parameters, png, gallery = client.predict(*STUDENT_64, api_name="/generate")
    with Image.open(image) as shown:
        assert shown.size == (64, 64)
    saved = read_png_parameters(png)
    assert (saved.width, saved.height, saved.steps, saved.seed) == (64, 64, 4, 0)
    assert saved.model == "student" and saved.method == "linfusion"
    assert "Steps: 4" in parameters and "Size: 64x64" in parameters
    assert "64×64" in gallery[0]["caption"] and "seed 0" in gallery[0]["caption"]


@pytest.mark.parametrize(("width", "height", "named"), [(70, 64, "width"), (0, 64, "width"), (20000, 64, "width"),
                                                       (64, 12, "height")])
def test_bad_size_is_refused_with_a_message_naming_it(client, width, height, named):
    with pytest.raises(AppError, match=rf"{named} must be a multiple of 8 between 8 and 16384"):
        client.predict("x", "", width, height, 4, 5.0, 0, "student", "auto", api_name="/generate")


@pytest.mark.parametrize(("change", "message"), [
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
    ({"seed": -1}, "seed must be an integer from 0"),
    ({"guidance": 101}, "guidance must be a number from 0 to 100"),
    ({"method": "softmaxx"}, "method must be one of auto, none"),
    ({"model": "no/such/folder"}, "model 'no/such/folder' is not a folder"),
])
def test_other_bad_inputs_name_the_parameter(client, change, message):
    names = ("prompt", "negative", "width", "height", "steps", "guidance", "seed", "model", "method")
    inputs = dict(zip(names, STUDENT_64, strict=True)) | change
    with pytest.raises(AppError, match=message):
        client.predict(*inputs.values(), api_name="/generate")


def new_log(server, start: int) -> str:
    return server.log.read_text(errors="replace")[start:]


@pytest.mark.parametrize(("endpoint", "change", "message"), [
    ("/generate", {"width": 64.5}, "width must be a whole number; got 64.5"),
    ("/generate", {"steps": 4.5}, "steps must be a whole number; got 4.5"),
    ("/highres", {"height": 96.25}, "height must be a whole number; got 96.25"),
])
def test_a_non_integer_is_refused_not_rounded_and_logged_in_one_line(server, client, endpoint, change, message):
    start = len(server.log.read_text(errors="replace"))
    names = ("prompt", "negative", "width", "height", "steps", "guidance", "seed", "model", "method")
    inputs = [*(dict(zip(names, STUDENT_64, strict=True)) | change).values()]
    extra = ["latent", "", 0.0, "auto"] if endpoint == "/highres" else []
    with pytest.raises(AppError, match=message):
        client.predict(*inputs, *extra, api_name=endpoint)
    logged = new_log(server, start)
    lines = [line for line in logged.splitlines() if message in line]
    assert len(lines) == 1 and "linfuse.ui: refused" in lines[0], logged
    assert "Traceback" not in logged


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) // 2], "input picture could not be read: it is cut short \\(truncated\\)"),
    (lambda data: b"not a picture" * 40, "input picture could not be read: it is not a picture file"),
])
def test_a_bad_upload_is_answered_with_what_is_wrong(server, client, tmp_path, damage, message):
    start = len(server.log.read_text(errors="replace"))
    noise = Image.effect_noise((64, 64), 60).convert("RGB")  # noise: a PNG whose pixel data is most of the file
    noise.save(tmp_path / "whole.png")
    (tmp_path / "bad.png").write_bytes(damage((tmp_path / "whole.png").read_bytes()))
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(tmp_path / "bad.png")), "bicubic", 2, 256, api_name="/upscale")
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(tmp_path / "bad.png")), "x", "", 0.5, 4, 5.0, 0, "student", "auto", 0, 0,
                       api_name="/img2img")
    logged = new_log(server, start)
    assert len([line for line in logged.splitlines() if "refused an upload" in line]) == 2, logged
    assert "Traceback" not in logged


def test_estimate_reports_mib_and_whether_it_fits(client):
    text = client.predict(64, 64, 5.0, "student", "auto", api_name="/estimate")
    assert "MiB" in text and "**fits**" in text and "64×64" in text
    refused = client.predict(70, 64, 5.0, "student", "auto", api_name="/estimate")
    assert "width must be a multiple of 8" in refused


def test_highres_endpoint_makes_the_target_size(client):
    image, parameters, _, gallery = client.predict(
        "dog face on a yellow background", "", 128, 96, 4, 5.0, 1, "student", "auto", "latent", "0.3", 1.0, "lean",
        api_name="/highres")
    with Image.open(image) as shown:
        assert shown.size == (128, 96)
    assert "Size: 128x96" in parameters and "skip residual 1" in gallery[0]["caption"]
    assert "memory lean" in gallery[0]["caption"]
    text = client.predict(128, 96, 5.0, "student", "auto", "latent", "0.3", "lean", api_name="/estimate_highres")
    assert "| base | 64×48 | lean |" in text
    with pytest.raises(AppError, match="memory must be one of auto, plain, lean"):
        client.predict("x", "", 128, 96, 4, 5.0, 1, "student", "auto", "latent", "0.3", 0, "small",
                       api_name="/highres")
    with pytest.raises(AppError, match=r"steps must be at least 4 .* int\(3 × 0.3\) = 0"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "latent", "0.3", 0, "auto", api_name="/highres")
    with pytest.raises(AppError, match="strengths must give 1 values"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "latent", "0.3, 0.2", 0, "auto",
                       api_name="/highres")
    with pytest.raises(AppError, match="upscale must be one of latent, pixel"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "nearest", "", 0, "auto", api_name="/highres")


def test_highres_endpoint_takes_ntk_and_proportional_attention_for_the_dit(client):
    image, _, _, gallery = client.predict(
        "red apple on a blue background", "", 256, 256, 10, 5.0, 1, "dit-student", "auto", "latent", "", 0, "auto",
        10, True, api_name="/highres")
    with Image.open(image) as shown:
        assert shown.size == (256, 256)
    assert "NTK 10, proportional attention on" in gallery[0]["caption"]
    with pytest.raises(AppError, match="ntk_factor must be in \\[1, 100\\]"):
        client.predict("x", "", 256, 256, 10, 5.0, 1, "dit-student", "auto", "latent", "", 0, "auto", 0.5, False,
                       api_name="/highres")
    with pytest.raises(AppError, match="ntk_factor scales FLUX's RoPE; unet has none"):
        client.predict("x", "", 128, 128, 10, 5.0, 1, "student", "auto", "latent", "", 0, "auto", 10, False,
                       api_name="/highres")


def test_img2img_works_at_the_input_size(client, emoji, tmp_path):
    wide = Image.new("RGB", (128, 64))
    wide.paste(emoji, (0, 0))
    wide.paste(emoji.transpose(Image.FLIP_LEFT_RIGHT), (64, 0))
    source = saved(wide, tmp_path / "wide.png")
    common = ("red apple on a blue background", "")
    image, parameters, png, gallery = client.predict(source, *common, 0.5, 10, 5.0, 0, "student", "auto", 0, 0,
                                                     api_name="/img2img")
    with Image.open(image) as shown:
        assert shown.size == (128, 64)
    assert "Size: 128x64" in parameters and read_png_parameters(png).steps == 10
    assert "img2img strength 0.5 from a 128×64 picture" in gallery[0]["caption"]
    with pytest.raises(AppError, match=r"strength must be in \(0, 1\]; got 1.5"):
        client.predict(source, *common, 1.5, 10, 5.0, 0, "student", "auto", 0, 0, api_name="/img2img")
    with pytest.raises(AppError, match=r"steps must be at least 5 for strength 0.2"):
        client.predict(source, *common, 0.2, 4, 5.0, 0, "student", "auto", 0, 0, api_name="/img2img")
    with pytest.raises(AppError, match="width and height must both be 0"):
        client.predict(source, *common, 0.5, 10, 5.0, 0, "student", "auto", 64, 0, api_name="/img2img")


def test_upscale_makes_the_picture_scale_times_larger(client, emoji, tmp_path):
    source = saved(emoji.resize((40, 30)), tmp_path / "small.png")
    image, _, summary, _ = client.predict(source, "bicubic", 4, 256, api_name="/upscale")
    with Image.open(image) as shown:
        assert shown.size == (160, 120)
    assert "bicubic: 40×30 → 160×120" in summary
    with pytest.raises(AppError, match="tile must be a whole number from 16 to 4096"):
        client.predict(source, "sesr-m5", 2, 8, api_name="/upscale")
    with pytest.raises(AppError, match="scale must be one of 2, 4; got 3"):
        client.predict(source, "sesr-m5", 3, 256, api_name="/upscale")
    name, scale = "sesr-m5", 2  # bundled (tests/test_sr.py checks every companion's file)
    image, png, summary, gallery = client.predict(source, name, scale, 256, api_name="/upscale")
    with Image.open(image) as shown:
        assert shown.size == (40 * scale, 30 * scale)  # sesr-m5 ×2: 80×60
    assert f"{name}: 40×30 → {40 * scale}×{30 * scale}" in summary and gallery[0]["caption"] in summary
    with Image.open(png) as stored:
        assert stored.text["Description"].startswith(f"upscaled ×{scale} with {name}")


def test_gradcam_gives_the_top_classes_and_an_overlay(client, emoji_file):
    _, names = load_classifier("cnn-svm")
    labels, overlay, scores = client.predict(handle_file(str(emoji_file)), "cnn-svm", "",
                                             api_name="/inspect_gradcam")
    top = [entry["label"] for entry in labels["confidences"]]
    assert len(top) == 5 and set(top) <= set(names) and labels["label"] == top[0]
    with Image.open(overlay) as shown:
        assert min(shown.size) >= 64
    assert f"Grad-CAM of **{top[0]}**" in scores
    _, _, scores = client.predict(handle_file(str(emoji_file)), "cnn-svm", "chestnut", api_name="/inspect_gradcam")
    assert "Grad-CAM of **chestnut**" in scores
    with pytest.raises(AppError, match="classifier must be cnn-svm or mobilenetv2 for Grad-CAM; got 'vae-svm'"):
        client.predict(handle_file(str(emoji_file)), "vae-svm", "", api_name="/inspect_gradcam")
    with pytest.raises(AppError, match="did you mean chestnut"):
        client.predict(handle_file(str(emoji_file)), "cnn-svm", "chesnut", api_name="/inspect_gradcam")


def test_linearscope_row_reconstructs_the_model_output(client, emoji, emoji_file):
    picture = handle_file(str(emoji_file))
    row, view, summary, numbers = client.predict(picture, "cnn-svm", 0, 0, "chestnut",
                                                 api_name="/inspect_linearscope")
    with Image.open(row) as shown:
        assert shown.size == (256, 256)
    assert numbers["output"] == "the score of class 'chestnut'"
    assert abs(numbers["reconstruction"] - numbers["model_output"]) < 1e-4
    assert numbers["reconstruction"] == pytest.approx(numbers["linear_part"] + numbers["bias"], abs=1e-12)
    with pytest.raises(AppError, match="ESPCN's tanh activations are not piecewise linear"):
        client.predict(picture, "espcn-x2", 0, 0, "", api_name="/inspect_linearscope")
    name, scale = "sesr-m5", 2
    row, view, summary, numbers = client.predict(picture, f"{name}-x{scale}", 10, 40, "",
                                                 api_name="/inspect_linearscope")
    with Image.open(row) as shown:
        assert shown.size == (256, 256)  # the 32×32 centre crop's weights, enlarged
    assert abs(numbers["reconstruction"] - numbers["model_output"]) < 1e-4
    luma = torch.tensor(list(emoji.convert("YCbCr").getdata(0)), dtype=torch.float32).reshape(1, 1, 64, 64) / 255
    with torch.no_grad():  # the reported output is the model's own, at output pixel (10, 40) of the centre crop's
        expected = float(load_sr(name, scale)(luma[..., 16:48, 16:48])[0, 0, 40, 10])
    assert numbers["model_output"] == pytest.approx(expected, abs=1e-5)
    side = 32 * scale
    assert f"pixel (10, 40) of the {side}×{side} upscaled crop" in summary
    with pytest.raises(AppError, match=rf"x must be a whole number from 0 to {side - 1} \(a column of the {side}×"):
        client.predict(picture, f"{name}-x{scale}", side, 0, "", api_name="/inspect_linearscope")


def test_validation_messages():
    assert check_size(64, 128.0) == (64, 128)
    for width, message in [(None, "width is empty"), (64.5, "width must be a whole number"),
                           (16392, "width must be a multiple of 8 between 8 and 16384")]:
        with pytest.raises(InvalidArgumentError, match=message):
            check_size(width, 64)
    assert check_params(None, None, 64, 64, 4, 5, 0).prompt == ""
    assert parse_strengths(" 0.4, 0.25 0.1 ") == (0.4, 0.25, 0.1) and parse_strengths("") is None


def test_the_preflight_view_names_the_librarys_largest_fitting_size(student):
    loaded = LoadedModel(ModelKey("student", "linfusion", None, "cpu", "float32"), student)
    # the cap holds the weights too (~40 MiB), the VAE's tile ~60 MiB, and every CPU stage a fixed 64 MiB:
    # 178 MiB fits 368×184, not 384×192
    options = preflight.HighResOptions(memory_limit=178 * 2**20, memory="plain")
    result = preflight.estimate(loaded, 384, 192, 5.0, progressive=True, options=options)
    assert not result.fits
    theirs = largest_fitting_size(student, 384, 192, native_side=64, guidance=True, model=loaded.memory_model(),
                                  limit=options.memory_limit, memory="plain")
    assert theirs[0] < 384
    text = preflight.describe(loaded, GenerationParams("x", width=384, height=192, guidance=5.0), progressive=True,
                              options=options)
    assert f"The largest 384:192 size that fits is **{theirs[0]}×{theirs[1]}**" in text


def test_gradio_server_variables_are_honoured_and_a_flag_wins(monkeypatch):
    """(The shared server of these tests is itself started with GRADIO_SERVER_PORT / _NAME only.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("linfuse_app", app_server.ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert (app.parse_args([]).port, app.parse_args([]).host) == (7860, "127.0.0.1")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert (app.parse_args([]).port, app.parse_args([]).host) == (7999, "0.0.0.0")
    assert (app.parse_args(["--port", "8001", "--host", "::1"]).port,
            app.parse_args(["--host", "::1"]).host) == (8001, "::1")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    with pytest.raises(SystemExit):
        app.parse_args([])
