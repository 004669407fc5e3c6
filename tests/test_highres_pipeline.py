"""``LinfuseHighResPipeline`` with diffusers' call conventions: generator, prompt lists, num_images_per_prompt,
output_type, callback_on_step_end, return_dict, from_pipe of SD and SDXL pipelines."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_sdxl_pipeline

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams
from linfuse.pipelines.highres import HighResOptions, generate_highres
from linfuse.pipelines.highres_pipeline import LinfuseHighResPipeline

PROMPT = "red apple on a blue background"
SMALL_TILES = {"vae_tile": 16, "vae_overlap": 4}


@pytest.fixture(scope="module")
def highres(student):
    pipe = LinfuseHighResPipeline.from_pipe(student)
    assert pipe.unet is student.unet and not pipe.is_sdxl  # same components, nothing copied
    return pipe


def call(pipe, **kwargs):
    defaults = dict(width=128, height=128, num_inference_steps=10, guidance_scale=5.0, progress=False, **SMALL_TILES)
    return pipe(**(defaults | kwargs)).images


def test_a_generator_gives_the_function_result(highres, student):
    image = call(highres, prompt=PROMPT, generator=torch.Generator().manual_seed(0))[0]
    expected = generate_highres(student, GenerationParams(PROMPT, width=128, height=128, steps=10, guidance=5.0,
                                                          seed=0), HighResOptions(**SMALL_TILES), progress=False)
    assert isinstance(image, Image.Image) and image.tobytes() == expected.tobytes()


def test_prompt_lists_images_per_prompt_and_output_types(highres):
    prompts = [PROMPT, "dog face on a yellow background"]
    generators = [torch.Generator().manual_seed(seed) for seed in range(4)]
    arrays = call(highres, prompt=prompts, num_images_per_prompt=2, generator=generators, output_type="np")
    assert arrays.shape == (4, 128, 128, 3) and arrays.dtype == np.float32 and 0 <= arrays.min() <= arrays.max() <= 1
    latents = call(highres, prompt=prompts[1], generator=torch.Generator().manual_seed(3), output_type="latent")
    assert latents.shape == (1, 4, 128 // highres.vae_scale_factor, 128 // highres.vae_scale_factor)
    pictures = call(highres, prompt=prompts, num_images_per_prompt=2,
                    generator=[torch.Generator().manual_seed(seed) for seed in range(4)])
    assert len(pictures) == 4 and all(p.size == (128, 128) for p in pictures)
    # image k of the list comes from generators[k]: the "np" and "pil" runs agree, and differ between images
    assert np.abs(np.asarray(pictures[3], dtype=np.float32) / 255 - arrays[3]).max() <= 1 / 255 + 1e-6
    assert np.abs(arrays[0] - arrays[1]).mean() > 0.01
    assert isinstance(highres(prompt=PROMPT, width=128, height=128, num_inference_steps=10, progress=False,
                              return_dict=False, **SMALL_TILES)[0][0], Image.Image)


def test_callback_on_step_end_runs_at_every_step_of_every_stage(highres):
    seen = []

    def callback(pipe, index, timestep, tensors):
        seen.append((tensors["latents"].shape[-1], index))
        return tensors

    call(highres, prompt=PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
         skip_residual=3.0)
    factor = highres.vae_scale_factor
    base = [index for side, index in seen if side == 64 // factor]
    refine = [index for side, index in seen if side == 128 // factor]
    assert base == list(range(10))  # the 64² base image: every step
    assert refine and refine == list(range(len(refine)))  # the ×2 refinement at strength 0.4: its own steps


@pytest.mark.parametrize("bad, message", [
    ({"output_type": "tensor"}, "output_type must be one of pil, np, latent"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an integer >= 1"),
    ({"prompt": []}, "prompt must be a string or a non-empty list"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt has 2 entries for 1 prompts"),
    ({"generator": [torch.Generator()] * 3}, "generator is a list of 3 for 1 images"),
    ({"tile_size": 3}, "unknown options tile_size"),
    ({"upscale": "nearest"}, "upscale must be one of latent, pixel"),
])
def test_bad_arguments_are_refused_before_any_work(highres, bad, message):
    with pytest.raises(InvalidArgumentError, match=message):
        call(highres, **({"prompt": PROMPT} | bad))


def test_sdxl_pipelines_run_the_progressive_path():
    base = tiny_sdxl_pipeline()
    linfuse.linearize(base)
    pipe = LinfuseHighResPipeline.from_pipe(base)
    assert pipe.is_sdxl and pipe.text_encoder_2 is base.text_encoder_2
    images = pipe("a cat", width=128, height=128, num_inference_steps=10, guidance_scale=5.0, progress=False,
                  generator=torch.Generator().manual_seed(0), **SMALL_TILES).images
    assert images[0].size == (128, 128)
