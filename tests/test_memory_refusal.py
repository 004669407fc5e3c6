"""`linfuse estimate` as a command (progress, model names, ranges, exit status, units) and the one memory refusal
that generate, img2img, high-res and the planner give (issue 26, defects 7 and 8)."""

import json

import pytest
from PIL import Image

from linfuse.cli import main
from linfuse.pipelines import GenerationParams, generate, native_size
from linfuse.pipelines.highres import HighResOptions, generate_highres, plan_job, preflight_job
from linfuse.pipelines.img2img import img2img
from linfuse.pipelines.plan import Stage, is_progressive
from linfuse.pipelines.planner import estimate_job
from linfuse.pipelines.preflight import InsufficientMemoryError, memory_text

TINY = ["--size", "64x64", "--device", "cpu", "--dtype", "fp32"]


def params(size=(64, 64)):
    return GenerationParams(prompt="red apple", width=size[0], height=size[1], steps=4, guidance=5.0, seed=0)


def test_estimate_takes_the_bundled_short_names_and_shows_progress_on_stderr(capsys):
    assert main(["estimate", "--model", "student", *TINY, "--memory", "1GiB"]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("student 64x64, fp32 on cpu") and "\nfits" in said.out
    assert "estimate: tracing the denoiser at 64x64, plain" in said.err  # progress, on stderr only
    assert "estimate:" not in said.out


def test_estimate_refuses_what_generate_refuses_before_any_work(capsys):
    assert main(["estimate", "--model", "student", *TINY, "--memory", "1GiB", "--guidance=-1"]) == 2
    err = capsys.readouterr().err
    assert "guidance must be a number from 0 to 100; got -1.0" in err and "estimate: planning" not in err
    assert main(["estimate", "--model", "student", "--size", "0x64", "--memory", "1GiB"]) == 2
    assert "width must be a multiple of 8 between 8 and 16384; got 0" in capsys.readouterr().err


def test_estimate_exits_1_with_the_refusal_when_the_job_does_not_fit_and_says_so_in_its_help(capsys):
    assert main(["estimate", "--model", "student", *TINY, "--memory", "1MiB", "--json"]) == 1
    said = capsys.readouterr()
    plan = json.loads(said.out)
    assert plan["fits"] is False and plan["largest_fitting"] is None
    assert plan["refusal"].startswith("64x64 with student does not fit: it needs ")
    assert "may use at most 90% of the free memory: 0.9 MiB of 1.0 MiB" in plan["refusal"]
    assert "a larger --memory" in plan["refusal"] and "linearized" not in plan["refusal"]
    assert plan["refusal"] in said.err
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    assert "1 when it does not" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_memory_below_a_gib_reads_in_mib():
    assert memory_text(2**20) == "1.0 MiB" and memory_text(700 * 2**20) == "700.0 MiB"
    assert memory_text(3 * 2**30) == "3.00 GiB" and memory_text(None) == "?"


def test_one_refusal_for_generate_img2img_and_high_res_with_only_what_can_be_done(student):
    limit = 64 * 2**20  # the 64 MiB the CPU runtime alone is counted at: nothing fits
    messages = []
    with pytest.raises(InsufficientMemoryError) as info:
        generate(student, params(), progress=False, memory="auto", memory_limit=limit)
    messages.append(str(info.value))
    with pytest.raises(InsufficientMemoryError) as info:
        img2img(student, Image.new("RGB", (64, 64), "red"), params(), strength=0.5,
                options=HighResOptions(memory_limit=limit))
    messages.append(str(info.value))
    with pytest.raises(InsufficientMemoryError) as info:
        generate_highres(student, params(), HighResOptions(memory_limit=limit), progress=False)
    messages.append(str(info.value))
    kinds = ["text-to-image", "image-to-image", "progressive generation"]
    for kind, message in zip(kinds, messages, strict=True):
        assert message.startswith(f"64x64 {kind} does not fit: it needs ")
        assert "may use at most 90% of the free memory: 57.6 MiB of 64.0 MiB" in message
        assert "No 1:1 size fits" in message and "vae_tile" not in message and "linearized" not in message
        assert message.endswith("To make 64x64 fit, try a larger memory cap (--max-memory, memory_limit=).")


def test_a_softmax_model_is_told_to_linearize_and_plain_mode_to_try_auto(teacher):
    with pytest.raises(InsufficientMemoryError) as info:
        generate(teacher, params(), progress=False, memory="plain", memory_limit=2**30 // 8, check_memory=True)
    message = str(info.value)
    assert "the auto memory mode, which takes the leanest setting that fits (--memory-mode auto" in message
    assert "a linearized model (--method linfusion, linfuse.linearize(pipe, method='linfusion'))" in message


@pytest.mark.parametrize("value, message", [
    ("lots", "--max-memory must be an amount such as 24GiB"),
    ("0", "--max-memory must be an amount such as 24GiB"),
    ("1000TiB", "--max-memory must be at most this device's"),
])
def test_a_bad_max_memory_exits_2_naming_it_before_the_model_is_looked_at(value, message, capsys):
    for command in (["generate", "x"], ["batch", "prompts.txt"], ["img2img", "in.png", "x"]):
        assert main([*command, "--model", "no/such-folder-here", "--device", "cpu", "--max-memory", value]) == 2
        err = capsys.readouterr().err
        assert message in err and "such-folder" not in err


def test_max_memory_caps_generate_as_on_a_shared_card(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "x", "--size", "64x64", "--steps", "4", "--device", "cpu", "--max-memory", "64MiB",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "64x64 text-to-image does not fit" in err and "(--max-memory, memory_limit=)" in err
    assert not out.exists()


def test_batch_refuses_a_job_that_does_not_fit_before_its_first_image_with_generates_message(tmp_path, capsys):
    """Under a 400 MiB cap, UNet plain, generate makes 64x64 and refuses 1024x1024 (progressive); a batch of the two
    makes neither and says what generate says."""
    cap = ["--steps", "10", "--device", "cpu", "--max-memory", "400MiB", "--memory-mode", "plain"]
    assert main(["generate", "red apple", "--size", "64x64", *cap, "--out", str(tmp_path / "small.png")]) == 0
    assert main(["generate", "red apple", "--size", "1024x1024", *cap, "--out", str(tmp_path / "large.png")]) == 2
    refusal = next(line for line in capsys.readouterr().err.splitlines() if "does not fit" in line)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "red apple", "width": 64, "height": 64}\n'
                       '{"prompt": "red apple", "width": 1024, "height": 1024}\n')
    assert main(["batch", str(prompts), "--out", str(tmp_path / "batch"), *cap]) == 2
    assert refusal in capsys.readouterr().err.splitlines()
    assert not (tmp_path / "batch").exists()


@pytest.mark.parametrize("size, cap_mib", [((64, 64), 90), ((512, 512), 150), ((512, 512), 175)])
def test_the_planner_and_the_runtime_preflight_give_the_same_verdict_peak_and_largest_size(student, size, cap_mib):
    """``linfuse estimate --model student`` and the preflight of the loaded student under ``--max-memory``."""
    cap = cap_mib * 2**20
    plan = estimate_job("student", *size, memory=cap, host_memory=cap, dtype="fp32", device="cpu", guidance=5.0)
    job = GenerationParams(prompt="red apple", width=size[0], height=size[1], steps=10, guidance=5.0)
    options = HighResOptions(memory_limit=cap)
    progressive = is_progressive(*size, max(native_size(student)))
    stages = plan_job(student, job, options) if progressive else [Stage(*size, 1.0)]
    try:
        estimate = preflight_job(student, job, options, stages, progressive=progressive)
        largest = None
    except InsufficientMemoryError as refused:
        estimate, largest = refused.estimate, refused.largest
    assert (estimate.fits, estimate.peak_device, estimate.modes) == (plan.fits, plan.peak_device_bytes,
                                                                     plan.estimate.modes)
    if not plan.fits:
        assert largest == plan.largest_fitting
