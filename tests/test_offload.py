"""Component offload (linfuse.pipelines.offload): the text encoders and VAE in host memory while the denoiser runs,
counted by the planner on the rungs that take it (the floor on CUDA), and removed without a trace."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_sdxl_pipeline

from linfuse.pipelines import GenerationParams, generate
from linfuse.pipelines.lean import LeanSettings, denoiser_lean_mode
from linfuse.pipelines.offload import component_offload, offload_enabled, offloadable
from linfuse.pipelines.planner import DTYPES, estimate_job, load_configs, meta_models, model_bytes
from linfuse.pipelines.preflight import SAFETY, TEXT_ENCODING_BYTES, offloaded_bytes, rung_ladder

GIB = 2**30
PARTS = ("text_encoder", "text_encoder_2", "vae")


def test_sdxl_16k_fits_a_10_gib_card_once_the_floor_moves_its_text_encoders_and_vae_to_host():
    """Before the offload the floor needed 10.32 GiB for SDXL at 16K (6.67 GiB of it weights) and 12416² was the
    largest square that fit 10 GiB."""
    plan = estimate_job("sdxl", 16384, 16384, memory=10 * GIB, host_memory=64 * GIB, find_largest=False)
    unet, vae, encoders = meta_models(load_configs("sdxl"), DTYPES["fp16"], "linfusion")
    moved = model_bytes(vae, *encoders)
    assert plan.fits and plan.peak_device_bytes <= 10 * GIB and plan.weights_bytes == moved + model_bytes(unet)
    last = plan.estimate.stages[-2]  # the 16K denoising stage; then the decode
    assert last.lean.floor and last.lean.offload and last.released == moved
    estimate = plan.estimate
    assert estimate.resident + estimate.stage_need(last)[0] == plan.weights_bytes - moved + last.device_bytes
    assert estimate.resident + last.device_bytes > SAFETY * 10 * GIB  # with every weight on the card: no fit
    # the prompt is encoded with the text encoders back on the card: counted in the stage's figure
    assert last.device_bytes >= model_bytes(*encoders) + TEXT_ENCODING_BYTES
    assert plan.to_json()["stages"][-2]["released_bytes"] == moved
    # the whole job runs offloaded (highres.job_offload): the VAE decodes with the text encoders still on the host
    assert plan.estimate.stages[-1].released == model_bytes(*encoders)


def test_nothing_is_offloaded_on_the_cpu_whose_device_memory_is_the_host():
    assert not any(rung and rung.offload for rung in rung_ladder("auto", "cpu") + rung_ladder("floor", "cpu"))
    assert not any(rung and rung.offload for rung in rung_ladder("auto", "cpu", dit=True))
    assert rung_ladder("auto", "cuda", dit=True)[-1].offload and rung_ladder("floor", "cuda", dit=True)[0].offload
    plan = estimate_job("student", 16384, 16384, memory=10 * GIB, host_memory=64 * GIB, dtype="fp32", device="cpu",
                        find_largest=False)
    assert plan.fits and not any(stage.released for stage in plan.estimate.stages)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_pipeline()


def _image(pipe):
    params = GenerationParams("a red apple", width=64, height=64, steps=2, guidance=5.0, seed=3)
    return torch.from_numpy(np.array(generate(pipe, params, progress=False)))


def _snapshot(pipe) -> dict:
    return {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in (*PARTS, "unet")}


def test_offloaded_components_give_the_same_image_and_leave_no_trace(sdxl):
    """On this CPU machine the execution device is the host, so the hooks run and move nothing; the GPU check
    measures the bytes they move on CUDA."""
    before, reference = _snapshot(sdxl), _image(sdxl)
    assert set(offloadable(sdxl)) == set(PARTS) and offloaded_bytes(sdxl) == (0, 0)  # CPU: nothing to gain
    with component_offload(sdxl, device=torch.device("cpu")):
        assert offload_enabled(sdxl) and all(hasattr(getattr(sdxl, name), "_hf_hook") for name in PARTS)
        assert not offloadable(sdxl)  # components under a hook are not taken twice
        assert len(sdxl.unet._forward_pre_hooks) == 1
        image = _image(sdxl)
    assert torch.equal(image, reference) and not offload_enabled(sdxl)
    for name in PARTS:
        module = getattr(sdxl, name)
        assert not {"_hf_hook", "_old_forward", "forward"} & set(module.__dict__)
    assert not sdxl.unet._forward_pre_hooks
    after = _snapshot(sdxl)
    assert all(torch.equal(after[name][k], v) for name in before for k, v in before[name].items())


def test_the_rung_installs_it_for_its_block_and_the_cpu_default_moves_nothing(sdxl):
    seen = []
    handle = sdxl.unet.register_forward_pre_hook(lambda *_: seen.append(offload_enabled(sdxl)))
    try:
        with denoiser_lean_mode(sdxl, LeanSettings(offload=True)):
            _image(sdxl)  # on the CPU the default device is the host: enabling is a no-op
        with component_offload(sdxl, device=torch.device("cpu")), denoiser_lean_mode(sdxl, LeanSettings()):
            _image(sdxl)
    finally:
        handle.remove()
    assert seen and seen[0] is False and seen[-1] is True and not offload_enabled(sdxl)


def test_a_flux_pipeline_offloads_its_clip_t5_and_vae_with_the_same_image():
    from tiny_dit_pipelines import build_pipeline

    flux = build_pipeline("flux")
    params = GenerationParams("a red apple", width=64, height=64, steps=2, guidance=1.0, seed=3)
    reference = np.array(generate(flux, params, progress=False))
    with component_offload(flux, device=torch.device("cpu")):
        assert all(hasattr(getattr(flux, name), "_hf_hook") for name in PARTS)  # CLIP, T5 and the VAE
        image = np.array(generate(flux, params, progress=False))
    assert np.array_equal(image, reference) and not flux.transformer._forward_pre_hooks
    assert not any(hasattr(getattr(flux, name), "_hf_hook") for name in PARTS)


def test_a_progressive_job_with_pixel_upscaling_runs_its_tiled_vae_on_the_offload_hooks_device(sdxl):
    """The tiled VAE sends each tile to the device an offloaded VAE computes on (its hook's), not to where its
    weights wait; here both are the CPU, and the image must not change."""
    from linfuse.pipelines.highres import HighResOptions, generate_highres
    from linfuse.pipelines.offload import execution_device

    params = GenerationParams("a red apple", width=128, height=128, steps=4, guidance=5.0, seed=1)
    options = HighResOptions(upscale="pixel", vae_tile=8, vae_overlap=2, memory="plain")
    reference = np.array(generate_highres(sdxl, params, options, progress=False))
    with component_offload(sdxl, device=torch.device("cpu")):
        assert execution_device(sdxl.vae) == sdxl.vae._hf_hook.execution_device
        image = np.array(generate_highres(sdxl, params, options, progress=False))
    assert np.array_equal(image, reference) and not offload_enabled(sdxl)


def test_diffusers_model_cpu_offload_keeps_its_hook_through_the_lean_rungs():
    """diffusers' enable_model_cpu_offload wraps the UNet's forward (accelerate calls ``_old_forward`` after moving
    the UNet to its device): the lean forward goes beneath that wrapper, so the hook still runs, and is taken out
    again without it. Here the hooks' device is the CPU."""
    from tiny_models import tiny_sd_pipeline

    from linfuse.pipelines.lean import disable_lean, enable_lean
    from linfuse.pipelines.lean.forwards import installed_forward

    pipe = tiny_sd_pipeline()
    params = GenerationParams("a red apple", width=64, height=64, steps=2, guidance=5.0, seed=3)
    lean = np.array(generate(pipe, params, progress=False, memory="lean"))
    pipe.enable_model_cpu_offload(device="cpu")
    # the planner and preflight ask where the UNet computes (the hook's device, here cpu:0), not where it waits
    from linfuse.pipelines.offload import execution_device

    assert execution_device(pipe.unet) == pipe._execution_device == torch.device("cpu", 0) != pipe.unet.device
    seen = []

    def step(p, index, timestep, tensors):
        unet = pipe.unet
        seen.append(installed_forward(unet) is not None and installed_forward(unet) is unet.__dict__["_old_forward"]
                    and installed_forward(unet) is not unet.__dict__["forward"])
        return tensors

    hooked = np.array(generate(pipe, params, progress=False, memory="lean", callback_on_step_end=step))
    assert np.array_equal(hooked, lean) and seen == [True, True]
    unet = pipe.unet
    assert hasattr(unet, "_hf_hook") and installed_forward(unet) is None
    assert unet._old_forward.__func__ is type(unet).forward  # the hook runs the UNet's own forward again
    enable_lean(unet)  # installed beneath the hook: the hook is kept when it is removed
    wrapper = unet.forward
    disable_lean(unet)
    assert unet.forward is wrapper and installed_forward(unet) is None
