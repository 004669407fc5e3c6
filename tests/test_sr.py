"""SR companions: metrics, tiled upscaling, the bundled weights against bicubic, `linfuse upscale`."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from linfuse.cli import main
from linfuse.companions.metrics import luma, psnr_y, ssim_y
from linfuse.companions.sr import SR_MODELS, SR_SCALES, build_sr, load_sr, save_sr, upscale_image, upscale_luma
from linfuse.companions.sr.data import crop_to_multiple, downscale, held_out_pictures
from linfuse.companions.sr.tiled import receptive_radius
from linfuse.companions.sr.zoo import read_metadata, weights_path
from linfuse.errors import InvalidArgumentError, LinfuseError


def noise_picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_luma_is_bt601_studio_range_and_psnr_matches_its_formula():
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    assert luma(white)[0, 0] == pytest.approx(235.0) and luma(black)[0, 0] == pytest.approx(16.0)
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    lighter = Image.new("RGB", (8, 8), (110, 110, 110))
    difference = (luma(lighter) - luma(grey))[0, 0]  # 10 · 219/255
    assert psnr_y(grey, lighter) == pytest.approx(10 * math.log10(255**2 / difference**2))
    assert psnr_y(grey, grey) == math.inf


def test_psnr_border_crop_ignores_the_border_and_ssim_orders_by_distortion():
    picture = noise_picture(40, 32)
    edited = np.asarray(picture).copy()
    edited[:2] = 0  # only the top 2 rows change
    assert psnr_y(picture, Image.fromarray(edited), border=2) == math.inf
    assert psnr_y(picture, Image.fromarray(edited), border=1) < 40
    smooth = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1))).convert("RGB")
    assert ssim_y(smooth, smooth) == pytest.approx(1.0)
    noisy = [Image.fromarray(np.clip(np.asarray(smooth, float) + np.random.default_rng(1).normal(0, s, (32, 40, 3)),
                                     0, 255).astype(np.uint8)) for s in (5, 20)]
    mild, strong = ssim_y(smooth, noisy[0]), ssim_y(smooth, noisy[1])
    assert mild < 1.0 and strong < mild and strong > 0
    with pytest.raises(InvalidArgumentError, match="border"):
        psnr_y(picture, picture, border=16)
    with pytest.raises(InvalidArgumentError, match="differ in size"):
        psnr_y(picture, noise_picture(40, 40))


@pytest.mark.parametrize("name, scale", [("espcn", 2), ("sesr-m3", 4), ("sesr-m5", 2)])
def test_tiled_upscaling_equals_the_whole_picture_at_once(name, scale):
    torch.manual_seed(0)
    model = build_sr(name, scale, expansion=8)
    model = model.collapse() if hasattr(model, "collapse") else model
    luma_plane = np.random.default_rng(0).random((45, 37)).astype(np.float32)
    whole = upscale_luma(model, luma_plane, tile=1000)
    tiled = upscale_luma(model, luma_plane, tile=16)
    assert whole.shape == (45 * scale, 37 * scale)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1  # float rounding at .5 only
    assert (whole != tiled).mean() < 1e-3
    assert receptive_radius(model) == (4 if name == "espcn" else 4 + int(name[-1]))


def test_every_bundled_model_loads_collapsed_with_its_training_command():
    for name in SR_MODELS:
        for scale in SR_SCALES:
            metadata = read_metadata(weights_path(name, scale))
            assert metadata["command"].startswith(f"linfuse train-sr --model {name} --scale {scale}")
            model = load_sr(name, scale)
            if name != "espcn":
                assert all(block.collapsed is not None for block in model.blocks)
            assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8 * scale, 8 * scale)


def test_bundled_sesr_m5_x2_beats_bicubic_by_2_db_on_the_held_out_pictures():
    pictures = held_out_pictures()
    model = load_sr("sesr-m5", 2)
    gains = {}
    for name, picture in pictures.items():
        original = crop_to_multiple(picture, 2)
        low = downscale(original, 2)
        bicubic = low.resize(original.size, Image.BICUBIC)
        restored = upscale_image(low, model)
        gains[name] = psnr_y(restored, original, border=2) - psnr_y(bicubic, original, border=2)
        assert ssim_y(restored, original, border=2) > ssim_y(bicubic, original, border=2), name
    emoji = [gain for name, gain in gains.items() if name.startswith("emoji-")]
    photos = [gain for name, gain in gains.items() if not name.startswith("emoji-")]
    assert sum(gains.values()) / len(gains) >= 2.0, gains
    assert sum(emoji) / len(emoji) >= 2.0, gains
    assert min(photos) > 0.5 and sum(photos) / len(photos) > 1.5, gains  # README: +1.77 dB on the 3 photographs


def test_saved_weights_round_trip_exactly(tmp_path):
    model = build_sr("sesr-m3", 2, expansion=8)
    path = save_sr(model, tmp_path / "m3.safetensors", {"command": "test"})
    loaded = load_sr("sesr-m3", 2, path=path)
    x = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))  # ``model`` was collapsed in place by save_sr


def test_bad_names_scales_and_missing_weights_are_refused_before_work(tmp_path):
    with pytest.raises(InvalidArgumentError, match="model must be one of"):
        load_sr("sesr-m7", 2)
    with pytest.raises(InvalidArgumentError, match="scale must be one of 2, 4"):
        load_sr("sesr-m5", 3)
    with pytest.raises(LinfuseError, match="linfuse train-sr --model sesr-m5 --scale 2"):
        load_sr("sesr-m5", 2, path=tmp_path / "absent.safetensors")
    with pytest.raises(InvalidArgumentError, match="tile must be >= 16"):
        upscale_image(noise_picture(8, 8), load_sr("espcn", 2), tile=4)


def test_upscale_command_writes_a_picture_scale_times_larger(tmp_path, capsys):
    source = tmp_path / "small.png"
    noise_picture(30, 20).save(source)
    assert main(["upscale", str(source), "--scale", "4", "--model", "sesr-m5", "--tile", "16"]) == 0
    out = tmp_path / "small-x4.png"
    assert Image.open(out).size == (120, 80)
    assert "sesr-m5 ×4" in capsys.readouterr().out
    assert main(["upscale", str(source), "--scale", "3"]) == 2
    assert "scale must be one of 2, 4" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "nothing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
