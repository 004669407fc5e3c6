"""DiT pipelines end to end on tiny FLUX, SD3 and PixArt-Σ folders: generate, progressive high-res, CLEAR options."""

import numpy as np
import pytest
import torch
from PIL import Image

from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, generate, load_pipeline, native_size
from linfuse.pipelines.families import call_arguments, family, size_multiple, unpack_latents
from linfuse.pipelines.highres import HighResOptions, generate_highres, highres_latents
from linfuse.pipelines.planner import load_configs
from linfuse.pipelines.planner import size_rule as planner_size_rule
from tests.tiny_dit_pipelines import NATIVE, save_pipeline

KINDS = ("flux", "sd3", "pixart")
COVERING = 1000  # a window radius larger than any grid here: CLEAR is then exact softmax attention


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dits")
    return {kind: save_pipeline(kind, root / kind) for kind in KINDS}


def load(folder, method="clear", **options):
    pipe = load_pipeline(str(folder), method=method, weights=None, device="cpu", dtype="fp32")
    if options:
        from linfuse import linearize, unlinearize

        unlinearize(pipe)
        linearize(pipe, method=method, **options)
    return pipe


def params(side: int, steps: int = 10) -> GenerationParams:
    return GenerationParams(prompt="red apple on a blue background", steps=steps, guidance=3.0, seed=3,
                            width=side, height=side)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_and_progressive_high_res_round_trip(folders, kind):
    pipe = load(folders[kind])
    assert family(pipe) == kind and native_size(pipe) == (NATIVE[kind], NATIVE[kind])
    assert pipe.linfuse_report.method == "clear"
    image = generate(pipe, params(NATIVE[kind]), progress=False)
    assert image.size == (NATIVE[kind], NATIVE[kind])
    side = 4 * NATIVE[kind] if kind != "sd3" else 64  # SD3's position table ends at 64 px here
    big = generate_highres(pipe, params(side), HighResOptions(), progress=False)
    assert big.size == (side, side)
    assert len(np.unique(np.asarray(big).reshape(-1, 3), axis=0)) > 10  # an image, not a constant


@pytest.mark.parametrize("kind", KINDS)
def test_a_covering_clear_student_equals_its_teacher_through_generate_and_high_res(folders, kind):
    teacher = load(folders[kind], method=None)
    student = load(folders[kind], radius=COVERING)
    for side in (NATIVE[kind], 2 * NATIVE[kind]):  # one stage (text to image), then base + refinement
        ours = highres_latents(student, params(side), HighResOptions(), progress=False)
        theirs = highres_latents(teacher, params(side), HighResOptions(), progress=False)
        assert ours.shape[-1] == side // teacher.vae_scale_factor
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    small = load(folders[kind], radius=1)
    narrow = highres_latents(small, params(2 * NATIVE[kind]), HighResOptions(), progress=False)
    assert (narrow - theirs).abs().max() > 1e-3  # a window smaller than the grid does change the result


def test_ntk_rope_and_proportional_attention_apply_above_the_native_size_and_are_undone(folders):
    pipe = load(folders["flux"], radius=3)
    theta = pipe.transformer.pos_embed.theta
    job = params(2 * NATIVE["flux"])
    plain = highres_latents(pipe, job, HighResOptions(), progress=False)
    ntk = highres_latents(pipe, job, HighResOptions(ntk_factor=10), progress=False)
    both = highres_latents(pipe, job, HighResOptions(ntk_factor=10, proportional_attention=True), progress=False)
    assert (ntk - plain).abs().max() > 1e-4 and (both - ntk).abs().max() > 1e-4
    assert pipe.transformer.pos_embed.theta == theta
    assert not any(m.processor.proportional_attention for m in pipe.transformer.modules()
                   if hasattr(m, "processor") and hasattr(m.processor, "proportional_attention"))
    native = params(NATIVE["flux"])  # one stage at the native size: NTK does not apply there
    torch.testing.assert_close(highres_latents(pipe, native, HighResOptions(ntk_factor=10), progress=False),
                               highres_latents(pipe, native, HighResOptions(), progress=False))


def test_family_rules(folders):
    flux = load(folders["flux"])
    assert size_multiple(flux) == 4  # VAE ×2, packing ×2
    args = call_arguments(flux, 3.0, None)
    assert args == {"max_sequence_length": 8, "true_cfg_scale": 3.0, "negative_prompt": ""}
    assert "true_cfg_scale" not in call_arguments(flux, 1.0, None)
    packed = torch.randn(2, 16 * 16, 8)
    assert unpack_latents(flux, packed, 64, 64).shape == (2, 2, 32, 32)
    pixart = load(folders["pixart"])
    assert call_arguments(pixart, 4.5, None)["use_resolution_binning"] is False
    for kind in ("flux", "sd3", "pixart"):  # one size rule: the loaded pipeline's and the planner's, from configs
        pipe = load(folders[kind])
        assert planner_size_rule(load_configs(str(folders[kind])), pipe.vae_scale_factor)[0] == size_multiple(pipe)


def test_bad_options_for_dits_are_refused_before_work(folders):
    flux, sd3, teacher = load(folders["flux"]), load(folders["sd3"]), load(folders["flux"], method=None)
    job = params(2 * NATIVE["flux"])
    with pytest.raises(InvalidArgumentError, match="skip_residual"):
        highres_latents(flux, job, HighResOptions(skip_residual=1.0), progress=False)
    with pytest.raises(InvalidArgumentError, match="ntk_factor"):
        highres_latents(sd3, params(32), HighResOptions(ntk_factor=10), progress=False)
    with pytest.raises(InvalidArgumentError, match="method clear"):
        highres_latents(teacher, job, HighResOptions(proportional_attention=True), progress=False)
    with pytest.raises(InvalidArgumentError, match="ntk_factor must be in"):
        HighResOptions(ntk_factor=0.5).validate()
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):
        generate(flux, params(30), progress=False)


def test_lean_memory_mode_gives_the_same_dit_result(folders):
    from linfuse.pipelines.highres import checked_stages
    from linfuse.pipelines.lean.dit import DiTLeanSettings

    pipe = load(folders["sd3"], radius=3)  # SD3 batches its two guidance halves: lean runs them one at a time
    job = params(2 * NATIVE["sd3"])
    plain = highres_latents(pipe, job, HighResOptions(memory="plain"), progress=False)
    lean = highres_latents(pipe, job, HighResOptions(memory="lean"), progress=False)
    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=1e-5)
    assert all(isinstance(s.lean, DiTLeanSettings) for s in checked_stages(pipe, job, HighResOptions(memory="lean")))
    assert all(s.lean is None for s in checked_stages(pipe, job, HighResOptions(memory="auto")))  # it fits


@pytest.mark.parametrize("kind", KINDS)
def test_img2img_takes_the_picture_size_rounded_to_the_family_multiple(folders, kind):
    from linfuse.pipelines.img2img import img2img

    pipe = load(folders[kind])
    picture = Image.new("RGB", (2 * NATIVE[kind] + 3, 2 * NATIVE[kind]), (200, 30, 30))
    out = img2img(pipe, picture, params(0), strength=0.3)
    assert out.size == (2 * NATIVE[kind], 2 * NATIVE[kind])  # rounded down to the family's multiple


def test_cli_generate_and_batch_take_a_dit_folder_and_record_clear(folders, tmp_path):
    from linfuse.cli import main

    out = tmp_path / "one.png"
    assert main(["generate", "red apple on a blue background", "--model", str(folders["flux"]), "--weights", "none",
                 "--steps", "4", "--size", "64x64", "--out", str(out)]) == 0  # 2× native: one stage
    image = Image.open(out)
    assert image.size == (64, 64) and "Linear attention: clear" in image.info["parameters"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple on a blue background\na cat\n")
    assert main(["batch", str(prompts), "--model", str(folders["pixart"]), "--weights", "none", "--steps", "3",
                 "--out", str(tmp_path / "batch")]) == 0
    made = sorted((tmp_path / "batch").glob("*.png"))
    assert [Image.open(p).size for p in made] == [(NATIVE["pixart"],) * 2] * 2


def test_tiled_vae_round_trips_a_16_channel_flux_style_vae():
    from diffusers import AutoencoderKL

    from linfuse.pipelines.tiled_vae import tiled_decode

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=8,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                        scaling_factor=0.3611, mid_block_add_attention=False).eval()
    latents = torch.randn(1, 16, 24, 24)
    with torch.no_grad():
        whole = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    one_tile = tiled_decode(vae, latents, tile=24, overlap=8)  # one tile: the whole decode, shift included
    torch.testing.assert_close(one_tile.clamp(-1, 1), whole.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    tiled = tiled_decode(vae, latents, tile=16, overlap=8)
    assert tiled.shape == (1, 3, 48, 48) and torch.isfinite(tiled).all()


def test_cli_ntk_and_proportional_attention_reach_the_progressive_stages(folders, tmp_path, capsys):
    from linfuse.cli import main

    base = ["generate", "red apple on a blue background", "--model", str(folders["flux"]), "--weights", "none",
            "--steps", "10", "--size", f"{4 * NATIVE['flux']}x{4 * NATIVE['flux']}"]  # 4× native: progressive
    assert main(base + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(base + ["--ntk-factor", "10", "--proportional-attention", "--out", str(tmp_path / "ntk.png")]) == 0
    plain, ntk = (np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.int16) for name in ("plain", "ntk"))
    assert plain.shape == ntk.shape == (4 * NATIVE["flux"], 4 * NATIVE["flux"], 3)
    assert np.abs(plain - ntk).max() > 0  # the options changed the refinements
    capsys.readouterr()
    assert main(base + ["--ntk-factor", "0.5"]) == 2
    assert "ntk_factor must be in [1, 100]" in capsys.readouterr().err
    sd3 = ["generate", "a cat", "--model", str(folders["sd3"]), "--weights", "none", "--steps", "10", "--size",
           f"{4 * NATIVE['sd3']}x{4 * NATIVE['sd3']}", "--ntk-factor", "10", "--out", str(tmp_path / "sd3.png")]
    assert main(sd3) == 2
    assert "--ntk-factor scales FLUX's RoPE; sd3 has none" in capsys.readouterr().err  # before loading
