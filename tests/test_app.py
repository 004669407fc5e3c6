"""The web UI (app.py) through its API, as gradio_client sees it, with the bundled student; plus the UI's own checks.

The server is a real ``python app.py`` subprocess (tests/app_server.py), shared with tests/test_app_browser.py.
"""

import app_server
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import largest_fitting_size, read_png_parameters
from linfuse.ui import preflight
from linfuse.ui.models import LoadedModel, ModelKey
from linfuse.ui.validation import check_params, check_size, parse_strengths

STUDENT_64 = ("red apple on a blue background", "", 64, 64, 4, 5.0, 0, "student", "auto")


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    yield app_server.shared(tmp_path_factory).url
    app_server.stop_shared()


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


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


def test_estimate_reports_mib_and_whether_it_fits(client):
    text = client.predict(64, 64, 5.0, "student", "auto", api_name="/estimate")
    assert "MiB" in text and "**fits**" in text and "64×64" in text
    refused = client.predict(70, 64, 5.0, "student", "auto", api_name="/estimate")
    assert "width must be a multiple of 8" in refused


def test_highres_endpoint_makes_the_target_size(client):
    image, parameters, _, gallery = client.predict(
        "dog face on a yellow background", "", 128, 96, 4, 5.0, 1, "student", "auto", "latent", "0.3", 1.0,
        api_name="/highres")
    with Image.open(image) as shown:
        assert shown.size == (128, 96)
    assert "Size: 128x96" in parameters and "skip residual 1" in gallery[0]["caption"]
    with pytest.raises(AppError, match=r"steps must be at least 4 .* int\(3 × 0.3\) = 0"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "latent", "0.3", 0, api_name="/highres")
    with pytest.raises(AppError, match="strengths must give 1 values"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "latent", "0.3, 0.2", 0,
                       api_name="/highres")
    with pytest.raises(AppError, match="upscale must be one of latent, pixel"):
        client.predict("x", "", 128, 96, 3, 5.0, 1, "student", "auto", "nearest", "", 0, api_name="/highres")


def test_validation_messages():
    assert check_size(64, 128.0) == (64, 128)
    for width, message in [(None, "width is empty"), (64.5, "width must be a whole number"),
                           (16392, "width must be a multiple of 8 between 8 and 16384")]:
        with pytest.raises(InvalidArgumentError, match=message):
            check_size(width, 64)
    assert check_params(None, None, 64, 64, 4, 5, 0).prompt == ""
    assert parse_strengths(" 0.4, 0.25 0.1 ") == (0.4, 0.25, 0.1) and parse_strengths("") is None


def test_last_fitting_finds_the_boundary_from_any_guess():
    sizes = [(8 * i, 8 * i) for i in range(1, 201)]
    for boundary in (0, 1, 57, 198):
        for exponent in (1.0, 2.0, 4.0):  # headroom falling slower, as, and faster than the guess assumes
            def probe(index, boundary=boundary, exponent=exponent):
                return index <= boundary, ((boundary + 1.5) / (index + 1)) ** exponent

            assert preflight.last_fitting(probe, sizes, 199, probe(199)[1]) == boundary


def test_largest_that_fits_agrees_with_the_library(student):
    loaded = LoadedModel(ModelKey("student", "linfusion", None, "cpu", "float32"), student)
    options = preflight.HighResOptions(memory_limit=76 * 2**20)  # the VAE's tile alone needs ~60 MiB
    result = preflight.estimate(loaded, 384, 192, 5.0, progressive=True, options=options)
    assert not result.fits
    ours = preflight.largest_that_fits(loaded, 384, 192, 5.0, options, result)
    theirs = largest_fitting_size(student, 384, 192, native_side=64, guidance=True, model=loaded.memory_model(),
                                  limit=options.memory_limit)
    assert ours == theirs and ours[0] < 384
