"""Stock diffusers pipelines with linearized UNets, and load_pipeline."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from tiny_models import tiny_sd_pipeline, tiny_sdxl_pipeline

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, generate


def run(pipe, **kwargs):
    return pipe("a red apple on a blue photo", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                **kwargs).images[0]


@pytest.mark.parametrize("make", [lambda: tiny_sd_pipeline("sd15"), lambda: tiny_sd_pipeline("sd21"),
                                  tiny_sdxl_pipeline])
def test_stock_text_to_image_pipelines_return_the_requested_size(make):
    pipe = make()
    pipe.set_progress_bar_config(disable=True)
    report = linfuse.linearize(pipe)
    assert report.layers_replaced in (16, 70)
    image = run(pipe, width=72, height=48)
    assert image.size == (72, 48)
    assert np.asarray(image, dtype=np.float32).std() > 0  # a real decoded image, not a constant fill


def test_img2img_pipeline_from_the_same_components():
    text2image = tiny_sd_pipeline()
    pipe = StableDiffusionImg2ImgPipeline(**text2image.components)
    pipe.set_progress_bar_config(disable=True)
    assert linfuse.linearize(pipe).layers_replaced == 16
    init = Image.new("RGB", (64, 56), (200, 30, 30))
    image = pipe("a red apple", image=init, strength=0.6, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 56)


def test_load_pipeline_from_a_saved_directory_linearizes_and_generates(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    pipe = linfuse.load_pipeline(tmp_path / "pipe", device="cpu")
    assert pipe.linfuse_report.layers_replaced == 16
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    image = generate(pipe, GenerationParams("a dog", width=64, height=64, steps=2, seed=3), progress=False)
    assert image.size == (64, 64)
    again = generate(pipe, GenerationParams("a dog", width=64, height=64, steps=2, seed=3), progress=False)
    assert np.array_equal(np.asarray(image), np.asarray(again))  # same seed, same image


def test_load_pipeline_refuses_bad_arguments_before_loading(tmp_path):
    with pytest.raises(InvalidArgumentError, match="dtype must be one of"):
        linfuse.load_pipeline(tmp_path, device="cpu", dtype="int8")
    with pytest.raises(InvalidArgumentError, match="model .*missing/dir. does not exist; pass a diffusers pipeline"):
        linfuse.load_pipeline(tmp_path / "missing" / "dir", device="cpu")
    with pytest.raises(InvalidArgumentError, match="has no model_index.json; pass a diffusers pipeline folder"):
        linfuse.load_pipeline(str(tmp_path), weights="auto", device="cpu")
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(InvalidArgumentError, match="weights='auto' knows published weights only for"):
        linfuse.load_pipeline(str(tmp_path), weights="auto", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="no CUDA GPU is visible"):
            linfuse.load_pipeline(tmp_path, device="cuda")


@pytest.mark.parametrize(
    "field, value, message",
    [("width", 100, "width must be a multiple of 8"), ("height", 16392, "height must be a multiple of 8 between"),
     ("steps", 0, "steps must be an integer from 1"), ("guidance", -1.0, "guidance must be a number"),
     ("seed", -5, "seed must be an integer from 0")],
)
def test_generation_parameters_are_validated_before_running(field, value, message):
    params = GenerationParams("a cat")
    setattr(params, field, value)
    with pytest.raises(InvalidArgumentError, match=message):
        params.validate()


def test_load_pipeline_accepts_a_pipeline_object():
    pipe = linfuse.load_pipeline(tiny_sd_pipeline(), device="cpu", dtype="fp32")
    assert pipe.linfuse_report.layers_replaced == 16
    assert str(linfuse.unlinearize(pipe)) == "16 self-attention layers restored to their original processors"
