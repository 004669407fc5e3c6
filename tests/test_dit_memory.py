"""The DiT lean mode (one sample at a time, chunked MLPs) and the planner for FLUX, SD3 and PixArt."""

import pytest
import torch
from tiny_dits import TINY_DITS, dit_inputs, run

from linfuse import linearize
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines.dit_memory import DiTMemoryModel
from linfuse.pipelines.lean.dit import DiTLeanSettings, dit_lean_mode, dit_lean_settings_of
from linfuse.pipelines.lean.forwards import installed_forward
from linfuse.pipelines.planner import estimate_job
from linfuse.pipelines.preflight import INDEX_LIMIT
from tests.tiny_dit_pipelines import save_pipeline

TINY_CHUNKS = DiTLeanSettings(chunk_elements=64)  # a few tokens per chunk: every loop runs many times


@pytest.mark.parametrize("kind", ["flux", "sd3", "pixart"])
def test_lean_transformer_equals_plain_and_is_removed_without_a_trace(kind):
    model = TINY_DITS[kind]()
    linearize(model, method="clear", radius=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = dit_inputs(kind, model)
    plain = run(model, inputs)
    with dit_lean_mode(model, TINY_CHUNKS):
        assert dit_lean_settings_of(model) == TINY_CHUNKS and installed_forward(model) is not None
        lean = run(model, inputs)
    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=1e-5)
    assert not any(installed_forward(m) or "forward" in m.__dict__ for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(run(model, inputs), plain, atol=0, rtol=0)


def test_with_autograd_the_models_own_forward_runs():
    model = TINY_DITS["flux"]()
    inputs = dit_inputs("flux", model)
    with dit_lean_mode(model, TINY_CHUNKS):
        out = model(**inputs).sample
    assert out.requires_grad  # trained through the plain forward


def test_lean_mode_removes_the_4d_wide_tensors_from_a_traced_flux_call():
    from tiny_dits import tiny_flux

    model = tiny_flux().to("meta")
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=2)
    memory = DiTMemoryModel(transformer=model, vae=vae, family="flux", vae_factor=1, text_tokens=5)
    plain = memory.unet_memory(64, 64, 1, None)
    lean = memory.unet_memory(64, 64, 1, TINY_CHUNKS)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    assert plain[2] == (32 * 32 + 5) * 5 * width  # the single block's [attention ‖ 4·d MLP] concatenation
    assert lean[2] < plain[2] / 4 and lean[0] < plain[0]


def test_flux_at_8k_on_an_80_gib_card_fits_only_in_lean_mode():
    lean = estimate_job("flux", 8192, 8192, memory=80 * 2**30, host_memory=64 * 2**30, dtype="bf16",
                        device="cuda", find_largest=False)
    assert lean.fits and lean.method == "clear" and lean.mode.startswith("lean")
    assert lean.estimate.max_elements < INDEX_LIMIT
    assert 30 * 2**30 < lean.weights_bytes < 34 * 2**30  # 11.9 B transformer + T5-XXL + CLIP-L + VAE in bf16
    plain = estimate_job("flux", 8192, 8192, memory=80 * 2**30, host_memory=64 * 2**30, dtype="bf16",
                         device="cuda", memory_mode="plain", find_largest=False)
    assert not plain.fits and plain.estimate.max_elements > INDEX_LIMIT


@pytest.mark.parametrize("model", ["flux-schnell", "sd3", "pixart-sigma"])
def test_other_shipped_dit_configs_plan_a_progressive_job(model):
    plan = estimate_job(model, 3072, 3072, memory=48 * 2**30, host_memory=64 * 2**30, dtype="fp16",
                        device="cuda", find_largest=False)
    stages = plan.estimate.stages
    assert plan.fits and plan.method == "clear"
    assert [s.label for s in stages] == ["base", "refine s=0.4", "refine s=0.1", "decode (VAE)"]
    assert (stages[0].width, stages[2].width) == (768, 3072)
    assert stages[2].device_bytes > 8 * stages[0].device_bytes  # 16× the tokens


def test_sd3_sizes_beyond_its_position_table_are_refused():
    with pytest.raises(InvalidArgumentError, match="up to 3072"):
        estimate_job("sd3", 4096, 4096, memory=80 * 2**30, host_memory=2**36, find_largest=False)
    with pytest.raises(InvalidArgumentError, match="multiple of 16"):
        estimate_job("flux", 1032, 1024, memory=80 * 2**30, host_memory=2**36, find_largest=False)


def test_a_dit_pipeline_folder_is_planned_from_its_configs(tmp_path):
    folder = save_pipeline("flux", tmp_path / "flux")
    plan = estimate_job(str(folder), 128, 128, memory=2**30, host_memory=2**33, dtype="fp32", device="cpu",
                        find_largest=True)
    assert plan.fits and plan.method == "clear"
    assert [s.label for s in plan.estimate.stages][:2] == ["base", "refine s=0.4"]  # native 32 px: progressive
    assert plan.largest_fitting is not None and plan.largest_fitting[0] % 4 == 0
