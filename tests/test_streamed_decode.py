"""The final decode streamed in row bands: bit-identical to the canvas decode, no full-size float tensor, and a PNG
written while it decodes (the tiny SD pipeline of tests/tiny_models.py)."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from largest_output import LargestOutput
from PIL import Image
from tiny_models import tiny_sd_pipeline, tiny_vae

from linfuse.cli import main
from linfuse.pipelines import read_png_parameters
from linfuse.pipelines.highres import HighResOptions, decode_images, decode_to_png, to_pil
from linfuse.pipelines.plan import Stage
from linfuse.pipelines.png_stream import PngStream
from linfuse.pipelines.preflight import CANVAS_BYTES_PER_PIXEL, decode_bytes, estimate_memory
from linfuse.pipelines.tiled_vae import decode_bands, tiled_decode


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def streamed(vae, latents, tile, overlap) -> np.ndarray:
    batch, _, height, width = latents.shape
    out, seen = np.zeros((batch, height * 8, width * 8, 3), dtype=np.uint8), 0
    for top, band in decode_bands(vae, latents, tile=tile, overlap=overlap):
        assert top == seen  # contiguous bands, top to bottom
        out[:, top:top + band.shape[1]] = band.numpy()
        seen += band.shape[1]
    assert seen == height * 8
    return out


# (latent height, width, tile, overlap): ragged sizes, overlaps from 0 to tile/2, a flush last row of tiles that
# reaches into the first (13 with 8 and 4: rows start at 0, 4, 5), one tile
@pytest.mark.parametrize("height, width, tile, overlap", [(13, 10, 8, 4), (17, 9, 8, 3), (20, 24, 10, 0),
                                                          (8, 8, 8, 0)])
def test_streamed_bands_equal_the_canvas_decode_bit_for_bit(vae, height, width, tile, overlap):
    torch.manual_seed(height * width + tile)
    latents = torch.randn(2, 4, height, width) * 3  # batch 2; spread enough to reach both clamps
    reference = np.stack([np.asarray(image) for image in to_pil(tiled_decode(vae, latents, tile=tile,
                                                                              overlap=overlap))])
    bands = streamed(vae, latents, tile, overlap)
    assert np.array_equal(bands, reference)
    assert (reference == 0).any() and (reference == 255).any() and len(np.unique(reference)) > 200


def largest_float() -> LargestOutput:
    """Records the element count of the largest floating-point tensor any operation makes."""
    return LargestOutput(lambda func, tensor: tensor.is_floating_point())


def test_the_streamed_decode_holds_no_float_tensor_of_the_image_size(vae):
    with largest_float() as canvas:
        tiled_decode(vae, torch.randn(1, 4, 8, 8), tile=8, overlap=0)
    assert canvas.largest >= 3 * 64 * 64  # the mode sees a canvas decode's canvas
    latents = torch.randn(1, 4, 20, 32)  # 160×256 pixels; rows of tiles at 0, 8, 12: the last reaches back
    image_elements = 3 * 160 * 256  # 122880
    with largest_float() as strips:
        for _ in decode_bands(vae, latents, tile=8, overlap=0):
            pass
    strip = 3 * 64 * 256  # one tile's rows × the width: 49152
    assert strip <= strips.largest < image_elements / 2, (strips.largest, image_elements)  # 49152 of 122880


def test_decode_images_equals_the_canvas_conversion(pipe):
    latents = torch.randn(2, 4, 11, 9) * 2
    options = HighResOptions(vae_tile=8, vae_overlap=3)
    images = decode_images(pipe, latents, options)
    reference = to_pil(tiled_decode(pipe.vae, latents, tile=8, overlap=3))
    assert [image.tobytes() for image in images] == [image.tobytes() for image in reference]


def test_png_stream_reads_back_exactly_with_valid_chunks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    image[20:] = (np.arange(29) * 9 % 256)[None, :, None]  # smooth rows: Sub, Up, Paeth get chosen
    file = io.BytesIO()
    stream = PngStream(file, 29, 37, {"parameters": "plain latin-1: é", "note": "not latin-1: ✓"})
    for top in range(0, 37, 5):
        stream.write(image[top:top + 5])
    stream.close()
    file.seek(0)
    Image.open(file).verify()  # chunk CRCs and structure
    file.seek(0)
    with Image.open(file) as read:
        assert np.array_equal(np.asarray(read), image)
        assert read.text == {"parameters": "plain latin-1: é", "note": "not latin-1: ✓"}
    filters = set(np.frombuffer(__import__("zlib").decompress(file.getvalue()[file.getvalue().index(b"IDAT") + 4:-16]),
                                dtype=np.uint8).reshape(37, 1 + 29 * 3)[:, 0])
    assert len(filters) >= 2  # adaptive: not one filter everywhere


def test_png_stream_refuses_a_band_of_the_wrong_shape_or_too_few_rows():
    stream = PngStream(io.BytesIO(), 4, 2)
    with pytest.raises(Exception, match=r"\(rows, 4, 3\) uint8"):
        stream.write(np.zeros((1, 5, 3), dtype=np.uint8))
    stream.write(np.zeros((1, 4, 3), dtype=np.uint8))
    with pytest.raises(Exception, match="given 1"):
        stream.close()


def test_a_png_streamed_while_decoding_equals_the_image_in_memory(pipe, tmp_path):
    latents = torch.randn(1, 4, 13, 10) * 2
    options = HighResOptions(vae_tile=8, vae_overlap=3)
    image = decode_images(pipe, latents, options)[0]
    path = decode_to_png(pipe, latents, options, tmp_path / "apple.png", text={"k": "v"})
    with Image.open(path) as read:
        read.verify()
    with Image.open(path) as read:
        assert read.size == (80, 104) and read.text == {"k": "v"}
        assert read.tobytes() == image.tobytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_generate_streams_a_progressive_png_with_its_parameters(tmp_path, capsys):
    folder = tmp_path / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder)
    out = tmp_path / "out" / "big.png"
    assert main(["generate", "an apple", "--model", str(folder), "--weights", "none", "--size", "128x64",
                 "--highres", "on", "--steps", "4", "--seed", "5", "--out", str(out)]) == 0
    assert f"wrote {out} (128x64)" in capsys.readouterr().out
    with Image.open(out) as read:
        read.verify()
    params = read_png_parameters(out)
    assert (params.width, params.height, params.steps, params.seed, params.prompt) == (128, 64, 4, 5, "an apple")
    with Image.open(out) as read:
        assert read.size == (128, 64) and len(np.unique(np.asarray(read).reshape(-1, 3), axis=0)) > 100
    assert not list(out.parent.glob(".*.tmp"))


def test_the_decode_stage_counts_one_strip_and_the_image_only_when_it_is_returned(pipe):
    stage = [Stage(128, 96, 1.0)]
    held, streamed = (estimate_memory(pipe, stage, tile=8, limit=2**40, to_file=to_file).stages[-1]
                      for to_file in (False, True))
    assert held.label == streamed.label == "decode (VAE)"
    assert streamed.host_bytes == 128 * 64 * (CANVAS_BYTES_PER_PIXEL + 3)  # 64-row strips
    assert held.host_bytes - streamed.host_bytes == 4 * 128 * 96
    width, height, tile = 4096, 2048, 64  # 512-row strips
    strip = width * 512 * (CANVAS_BYTES_PER_PIXEL + 3)
    assert decode_bytes(width, height, 8, tile, to_file=True) == strip
    assert decode_bytes(width, height, 8, tile) == strip + 4 * width * height
    assert decode_bytes(width, height, 8, tile, batch=2, to_file=True) == 2 * strip
    assert decode_bytes(256, 128, 8, tile, to_file=True) == 256 * 128 * (CANVAS_BYTES_PER_PIXEL + 3)  # one tile


def test_the_16k_projection_scales_each_measured_stage_by_its_denoising_steps():
    """bench/highres_runs.py projects a job from the largest run's stages: at that run's own size and steps it gives
    the run's time back; at other steps each stage scales by int(steps × strength)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("highres_runs", Path(__file__).parent.parent / "bench" /
                                                  "highres_runs.py")
    runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runs)
    # 1024²: base 64², then refinements at s = 0.4, 0.3, 0.2, 0.1: five stages
    row = {"size": 1024, "steps": 10, "seconds": 100.0, "stage_seconds": [1.0, 4.0, 6.0, 9.0, 20.0]}
    assert runs.projected_seconds([row], 1024, 10) == pytest.approx(100.0)
    from linfuse.pipelines.plan import denoising_steps, plan_stages

    stages = plan_stages(1024, 1024, 64)
    assert len(stages) == len(row["stage_seconds"])
    ratio = [denoising_steps(20, s.strength) / denoising_steps(10, s.strength) for s in stages]
    expected = sum(t * r for t, r in zip(row["stage_seconds"], ratio, strict=True)) + 60.0
    assert runs.projected_seconds([row], 1024, 20) == pytest.approx(expected)
    # 2048²: the five measured stages at the same latents (each still one step per 10 at its strength here: 40 s),
    # the 2048² stage at 4× the last one's per-pixel time (80 s), loading and decode at 4× (240 s)
    assert runs.projected_seconds([row], 2048, 10) == pytest.approx(360.0)
