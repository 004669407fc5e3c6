"""Memory modes on the denoising paths (auto / plain / lean), and the planner ``linfuse estimate``."""

import json

import numpy as np
import pytest
from PIL import Image

from linfuse.cli import main
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, generate
from linfuse.pipelines.highres import HighResOptions, generate_highres, plan_job, preflight_job
from linfuse.pipelines.img2img import img2img
from linfuse.pipelines.plan import Stage
from linfuse.pipelines.planner import estimate_job, parse_memory
from linfuse.pipelines.preflight import SAFETY, MemoryModel, estimate_memory, weights_bytes

GIB = 2**30


def params(size=(128, 128)):
    return GenerationParams(prompt="red apple on a blue background", width=size[0], height=size[1], steps=10,
                            guidance=5.0, seed=0)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_auto_runs_plain_when_it_fits_and_lean_when_only_lean_fits(student):
    model = MemoryModel(student)
    stage = [Stage(512, 512, 1.0)]
    plain = estimate_memory(student, stage, model=model, memory="plain", limit=64 * GIB).stages[0]
    lean = estimate_memory(student, stage, model=model, memory="lean", limit=64 * GIB).stages[0]
    assert lean.device_bytes < 0.5 * plain.device_bytes
    roomy = estimate_memory(student, stage, model=model, memory="auto", limit=64 * GIB)
    between = int(((plain.device_bytes + lean.device_bytes) / 2 + weights_bytes(student)) / SAFETY)  # weights held
    tight = estimate_memory(student, stage, model=model, memory="auto", limit=between)
    assert roomy.modes == ["plain"] and tight.modes == ["lean"] and tight.stage_fits(tight.stages[0])
    plain_only = estimate_memory(student, stage, model=model, memory="plain", limit=between)
    assert not plain_only.stage_fits(plain_only.stages[0])


def test_progressive_job_in_a_tight_limit_runs_lean_stages_and_makes_the_plain_picture(student, capsys):
    job = params((256, 256))
    plain = generate_highres(student, job, HighResOptions(memory="plain"), progress=False)
    probe = HighResOptions(memory="lean", memory_limit=64 * GIB)
    lean_need = max(s.device_bytes for s in preflight_job(student, job, probe, plan_job(student, job, probe)).stages
                    if s.denoising)
    # a limit the lean UNet fits and the plain one does not (the VAE decode, not checked here, would need more)
    options = HighResOptions(memory="auto", memory_limit=int((lean_need + weights_bytes(student)) / SAFETY) + 2**20,
                             check_memory=False)
    estimate = preflight_job(student, job, options, plan_job(student, job, options))
    assert estimate.modes[-1] == "lean" and estimate.modes[0] == "plain"  # the small base stage still fits plain
    image = generate_highres(student, job, options, progress=True)
    said = capsys.readouterr()
    assert "memory: 64x64 plain" in said.out + said.err and "256x256 lean" in said.out + said.err
    assert mean_difference(image, plain) <= 1.0  # at most one 8-bit level on average


def test_the_run_says_which_mode_each_stage_took(student, capsys):
    generate_highres(student, params((128, 128)), HighResOptions(memory="lean"), progress=True)
    said = capsys.readouterr()
    assert "memory: 64x64 lean; 128x128 lean" in said.out + said.err


def test_generate_and_img2img_in_lean_mode_equal_plain(student):
    plain = generate(student, params(), progress=False, memory="plain")
    lean = generate(student, params(), progress=False, memory="lean")
    assert mean_difference(plain, lean) <= 1.0
    edited = [img2img(student, plain, params(), strength=0.5, options=HighResOptions(memory=mode))
              for mode in ("plain", "lean")]
    assert mean_difference(*edited) <= 1.0


def test_a_bad_memory_mode_names_the_parameter(student):
    with pytest.raises(InvalidArgumentError, match="memory must be one of auto, plain, lean"):
        HighResOptions(memory="tiny").validate()
    with pytest.raises(InvalidArgumentError, match="memory must be one of"):
        generate(student, params(), memory="fast")


# ---- the planner ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_16k_fits_a_24_gib_card_in_lean_mode(model, capsys):
    code = main(["estimate", "--model", model, "--size", "16384x16384", "--dtype", "fp16", "--device", "cuda",
                 "--memory", "24GiB", "--host-memory", "64GiB", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0 and plan["fits"]
    assert plan["peak_device_bytes"] <= 24 * GIB and plan["max_tensor_elements"] < 2**31
    assert plan["mode"].startswith("lean") and plan["largest_fitting"] == [16384, 16384]
    for key in ("peak_host_bytes", "weights_bytes", "stages"):
        assert key in plan


def test_sd15_16k_fits_a_16_gib_card_with_its_skips_parked_in_host_memory():
    plan = estimate_job("sd15", 16384, 16384, memory=16 * GIB, host_memory=64 * GIB)
    assert plan.fits and plan.mode == "lean, skips parked in host memory"
    assert plan.estimate.stages[-2].host_bytes > 12 * GIB  # the parked skips of the 16K stage


def test_the_planner_from_a_pipeline_folder_agrees_with_the_preflight_of_the_loaded_pipeline(student):
    plan = estimate_job("assets/linfuse-emoji-student", 256, 256, memory=2**40, host_memory=2**40, dtype="fp32",
                        device="cpu", guidance=5.0)
    loaded = preflight_job(student, params((256, 256)), HighResOptions(memory_limit=2**40),
                           plan_job(student, params((256, 256)), HighResOptions()))
    assert [(s.label, s.device_bytes, s.mode) for s in plan.estimate.stages] == \
        [(s.label, s.device_bytes, s.mode) for s in loaded.stages]
    components = (student.unet, student.vae, student.text_encoder)
    held = [t for m in components for t in (*m.parameters(), *m.buffers())]
    assert plan.weights_bytes == sum(t.nelement() * t.element_size() for t in held)


@pytest.mark.parametrize("model, card", [("sd15", 8), ("sd15", 12), ("sdxl", 12)])
def test_16k_fits_an_8_gib_card_for_sd15_and_12_gib_for_sdxl_on_the_floor(model, card):
    """Fused up-sampling alone needs 11.5 GiB for SD-1.5 (more than 90 % of 12 GiB); the floor rung holds about one
    finest activation (2.5 GiB in fp16) beside the weights."""
    job = {"memory": card * GIB, "host_memory": 64 * GIB, "find_largest": False}
    auto = estimate_job(model, 16384, 16384, **job)
    assert auto.fits and auto.peak_device_bytes <= card * GIB and auto.estimate.max_elements < 2**31
    assert auto.mode == "floor, skips parked in host memory, up-sampling fused, resnets depth-first, text encoders " \
        "and VAE off the device"
    assert auto.estimate.modes[:2] == ["plain"] * 2  # the small stages still run plain
    if card == 12 and model == "sd15":
        lean = estimate_job(model, 16384, 16384, memory_mode="lean", **job)
        assert auto.peak_device_bytes < lean.peak_device_bytes - 5 * GIB


def test_plain_16k_does_not_fit_even_an_h200_and_says_what_fits():
    plan = estimate_job("sd15", 16384, 16384, memory=141 * 10**9, host_memory=64 * GIB, memory_mode="plain")
    assert not plan.fits and plan.estimate.max_elements >= 2**31
    assert plan.largest_fitting is not None and plan.largest_fitting[0] < 16384


def test_the_table_names_every_stage_and_the_verdict(capsys):
    assert main(["estimate", "--model", "sd21", "--size", "1536x768", "--memory", "1TiB", "--host-memory", "1TiB",
                 "--device", "cpu", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "| base | 1536x768 | plain |" in out and "\nfits" in out and "weights 4.99 GiB" in out
    assert "size that fits: 16384x8192" in out


@pytest.mark.parametrize("arguments, message", [
    (["--model", "sd9", "--size", "512x512"],
     "model must be one of flux, flux-schnell, pixart-sigma, sd15, sd21, sd3, sdxl"),
    (["--model", "sd15", "--size", "1000x1001"], "height must be a multiple of 8 between 8 and 16384; got 1001"),
    (["--model", "sd15", "--size", "16392x512"], "width must be a multiple of 8 between 8 and 16384; got 16392"),
    (["--model", "sd15", "--size", "512x512", "--memory", "lots"], "--memory must be an amount such as 24GiB"),
    (["--model", "sd15", "--size", "512x512", "--memory-mode", "small"], "--memory-mode must be one of auto, plain"),
])
def test_bad_estimate_arguments_exit_2_naming_the_parameter(arguments, message, capsys):
    assert main(["estimate", "--memory", "8GiB", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_memory_amounts():
    assert parse_memory("24GiB") == 24 * GIB == parse_memory("24g")
    assert parse_memory("24GB") == 24 * 10**9
    assert parse_memory("800MiB") == 800 * 2**20


def test_a_bad_model_is_named_before_anything_about_this_machines_memory(capsys):
    assert main(["estimate", "--model", "sd9", "--size", "512x512"]) == 2  # no --memory: the model is said first
    assert "model must be one of flux, flux-schnell, pixart-sigma, sd15, sd21, sd3, sdxl" in capsys.readouterr().err
