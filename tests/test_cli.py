"""The linfuse command line and the A1111-style parameters it writes into PNGs."""

import subprocess
import sys

import pytest
from PIL import Image
from tiny_models import tiny_sd_pipeline

from linfuse.cli import main
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, read_png_parameters


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(path)
    return path


def test_generate_writes_a_png_whose_parameters_round_trip(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "img" / "apple.png"
    code = main(["generate", "a red apple, on: a \"blue\" table", "--model", str(pipeline_dir), "--weights", "none",
                 "--size", "80x64", "--steps", "3", "--guidance", "5.5", "--seed", "1234", "--negative", "blurry, dog",
                 "--out", str(out)])
    assert code == 0
    assert f"wrote {out} (80x64)" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (80, 64)
    params = read_png_parameters(out)
    assert params.prompt == 'a red apple, on: a "blue" table'
    assert params.negative_prompt == "blurry, dog"
    assert (params.width, params.height, params.steps, params.guidance, params.seed) == (80, 64, 3, 5.5, 1234)
    assert params.sampler == "DDIMScheduler" and params.method == "linfusion"
    assert params.model == "tiny-sd"  # the folder's name: no absolute path leaks into shared images
    with Image.open(out) as image:
        assert str(pipeline_dir.parent) not in image.text["parameters"]
    assert params.version.startswith("linfuse ")
    assert not list(out.parent.glob("*.tmp"))


def test_default_size_is_the_model_native_size_and_softmax_is_available(pipeline_dir, tmp_path):
    out = tmp_path / "teacher.png"
    assert main(["generate", "a cat", "--model", str(pipeline_dir), "--method", "none", "--steps", "1",
                 "--out", str(out)]) == 0
    params = read_png_parameters(out)
    assert (params.width, params.height) == (64, 64) and params.method == "none"


@pytest.mark.parametrize(
    "extra, message",
    [(["--size", "100x64"], "width must be a multiple of 8"), (["--size", "64"], "size must look like WIDTHxHEIGHT"),
     (["--steps", "0"], "steps must be an integer from 1"), (["--method", "mamba"], "method must be one of clear,"),
     (["--weights", "/no/such/weights"], "does not exist"),
     (["--size", "256x256", "--steps", "4", "--weights", "none"], "steps must be at least 10 for this progressive")],
)
def test_bad_arguments_exit_2_with_a_message(pipeline_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    code = main(["generate", "a cat", "--model", str(pipeline_dir), "--out", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("weights", [[], ["--weights", "auto"]])
def test_a_missing_model_path_is_named_as_such(tmp_path, capsys, weights):
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["generate", "a cat", "--model", str(missing), *weights, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"model '{missing}' does not exist" in err and "weights" not in err


def test_local_paths_are_recorded_by_name_and_hub_ids_as_they_are(tmp_path):
    from linfuse.pipelines.parameters import public_name

    student = tmp_path / "my-student"
    (student / "linear_attention").mkdir(parents=True)
    assert public_name(str(student)) == "my-student"
    assert public_name(str(student / "linear_attention")) == "my-student/linear_attention"
    assert public_name("Yuanshi/LinFusion-1-5") == "Yuanshi/LinFusion-1-5"
    assert public_name("Huage001/CLEAR/clear_local_16_down_4.safetensors") == (
        "Huage001/CLEAR/clear_local_16_down_4.safetensors")
    assert public_name("student") == "student" and public_name("") == ""
    assert public_name("/gone/elsewhere/model-x") == "model-x"  # absolute, even when missing


def test_a_missing_bundled_model_says_what_to_do(capsys, monkeypatch, tmp_path):
    from linfuse.pipelines import loading

    monkeypatch.setitem(loading.BUNDLED_MODELS, "student", tmp_path / "gone")
    monkeypatch.delenv("LINFUSE_MODEL", raising=False)
    assert main(["generate", "a cat", "--out", str(tmp_path / "x.png")]) == 2
    assert "the bundled student model is missing" in capsys.readouterr().err


def test_console_script_info_reports_versions_and_device():
    result = subprocess.run([sys.executable, "-m", "linfuse", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "linfuse 0.1.0" in result.stdout and "diffusers" in result.stdout and "device " in result.stdout
    assert "bundled models:" in result.stdout


@pytest.mark.parametrize(
    "params",
    [GenerationParams("plain"),
     GenerationParams("multi\nline, prompt: yes", negative_prompt="neg, \"q\"", width=1024, height=768, steps=50,
                      guidance=0.0, seed=2**32 - 1, sampler="EulerDiscreteScheduler", model="/models/a, b",
                      method="linfusion", weights="Yuanshi/LinFusion-1-5", version="linfuse 0.1.0")],
)
def test_parameters_text_round_trips(params):
    assert GenerationParams.from_text(params.to_text()) == params


def test_text_without_a_parameter_line_is_refused():
    with pytest.raises(InvalidArgumentError, match="no parameter line"):
        GenerationParams.from_text("just a prompt")


def test_torchvision_fallback_notices_are_not_printed(pipeline_dir, tmp_path):
    """transformers warns that its image processors fall back to PIL without torchvision; linfuse never uses them,
    so the command line drops exactly those notices (a plain diffusers import still prints them: the control)."""
    load = f"from diffusers import AutoPipelineForText2Image as A; A.from_pretrained(r'{pipeline_dir}')"
    control = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    if "requires torchvision (not installed)" not in control.stderr:
        pytest.skip("this environment prints no torchvision fallback notice (torchvision installed?)")
    run = subprocess.run([sys.executable, "-m", "linfuse.cli", "generate", "a cat", "--model", str(pipeline_dir),
                          "--weights", "none", "--steps", "1", "--out", str(tmp_path / "cat.png")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "requires torchvision" not in run.stderr
    assert "linfusion:" in run.stderr  # the conversion report, linfuse's own stderr, still shows
