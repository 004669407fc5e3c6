"""Progressive high-resolution generation, tiled VAE, memory trace and preflight, on the bundled emoji models."""

import re

import pytest
import torch
from PIL import Image

from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams
from linfuse.pipelines.highres import HighResOptions, generate_highres, plan_job, preflight_job, to_pil
from linfuse.pipelines.memory_trace import LiveBytes, traced_peak
from linfuse.pipelines.plan import minimum_steps, plan_stages
from linfuse.pipelines.preflight import InsufficientMemoryError, MemoryModel, estimate_memory
from linfuse.pipelines.tiled_vae import axis_weights, tile_starts, tiled_decode, tiled_encode


def params(size=(128, 128), **kwargs):
    return GenerationParams(prompt="red apple on a blue background", width=size[0], height=size[1], steps=10,
                            guidance=5.0, seed=kwargs.pop("seed", 0), **kwargs)


# ---- plan --------------------------------------------------------------------------------------------------------


def test_plan_halves_down_to_the_native_side_with_linfusion_strengths():
    stages = plan_stages(2048, 2048, 64)
    assert [(s.width, s.height) for s in stages] == [(64, 64), (128, 128), (256, 256), (512, 512), (1024, 1024),
                                                     (2048, 2048)]
    assert [s.strength for s in stages] == [1.0, 0.4, 0.325, 0.25, 0.175, 0.1]
    wide = plan_stages(1000, 400, 64)
    assert [(s.width, s.height) for s in wide] == [(64, 24), (128, 48), (248, 96), (496, 200), (1000, 400)]
    assert plan_stages(64, 64, 64) == plan_stages(64, 64, 64, strengths=[]) and len(plan_stages(64, 64, 64)) == 1


def test_plan_rounds_stages_to_the_models_size_multiple():
    """FLUX's sides are multiples of 16 (8× VAE, 2×2 packing): 1040 halves to 520 for a UNet, not for FLUX."""
    unet = plan_stages(1040, 400, 128)
    assert [(s.width, s.height) for s in unet] == [(128, 48), (256, 96), (520, 200), (1040, 400)]
    flux = plan_stages(1040, 400, 128, multiple=16)
    assert [(s.width, s.height) for s in flux] == [(128, 48), (256, 96), (512, 192), (1040, 400)]


@pytest.mark.parametrize("width, strengths, message", [
    (20000, None, "width must be a multiple of 8 between 8 and 16384"),
    (100, None, "width must be a multiple of 8"),
    (256, [0.3], "strengths must give 2 values"),
    (256, [0.3, 1.2], r"strengths must lie in \(0, 1\)"),
])
def test_plan_refuses_bad_requests(width, strengths, message):
    with pytest.raises(InvalidArgumentError, match=message):
        plan_stages(width, 128, 64, strengths)


# ---- tiled VAE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (97, 32, 16), (33, 32, 4), (32, 32, 8), (300, 40, 0)])
def test_tiles_cover_the_axis_and_weights_sum_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlaps >= `overlap`
    total = torch.zeros(length, dtype=torch.float64)
    for start, weight in zip(starts, axis_weights(length, starts, size), strict=True):
        assert (weight > 0).all()
        total[start:start + size] += weight
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-12)


def reference_latents(pipe, height=96, width=64):
    """Latents of a real picture: the base model's image upscaled, encoded whole."""
    image = torch.nn.functional.interpolate(pipe(prompt="sunflower on a purple background", num_inference_steps=4,
                                                 guidance_scale=5.0, output_type="pt",
                                                 generator=torch.Generator().manual_seed(0)).images * 2 - 1,
                                            size=(height * 4, width * 4), mode="bicubic").clamp(-1, 1)
    with torch.no_grad():
        return image, pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor


def column_steps(images):
    return (images[..., 1:] - images[..., :-1]).abs().mean(dim=(0, 1, 2))


def test_tiled_decode_and_encode_match_the_whole_image(student):
    vae = student.vae
    image, latents = reference_latents(student, height=128, width=96)  # 3×2 tiles of 64 with overlap 16
    with torch.no_grad():
        whole = vae.decode(latents / vae.config.scaling_factor).sample
    own_error = (whole - image).abs().mean()  # the VAE's own reconstruction error, for scale
    tiled = tiled_decode(vae, latents, tile=64, overlap=16)
    assert tiled.shape == whole.shape == (1, 3, 512, 384)
    assert (tiled - whole).abs().mean() < 0.15  # [-1, 1] scale; each tile uses its own GroupNorm statistics
    assert (tiled - image).abs().mean() < 1.05 * own_error  # as faithful to the picture as the whole decode
    seams = column_steps(tiled).mean() / column_steps(whole).mean()
    assert seams < 1.1  # no extra edges where tiles meet
    assert torch.equal(tiled_decode(vae, latents, tile=128, overlap=16), whole)  # one tile: exactly the whole
    encoded = tiled_encode(vae, image, tile=64, overlap=16)
    assert encoded.shape == latents.shape
    assert (encoded - latents).abs().mean() < 0.2 * latents.abs().mean()


def test_to_pil_in_bands_equals_a_direct_conversion():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 1100, 37) * 2.2 - 1.1  # taller than one band, values beyond [-1, 1]
    direct = ((images[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert (torch.from_numpy(__import__("numpy").asarray(to_pil(images)[0])) == torch.from_numpy(direct)).all()


# ---- memory trace ------------------------------------------------------------------------------------------------


def test_live_bytes_counts_each_storage_once_until_its_last_view_dies():
    x = torch.empty(1000, device="meta")  # 4,000 bytes, existing
    with LiveBytes([x]) as trace:
        doubled = x * 2  # +4,000
        view = doubled.view(10, 100).t()  # same storage: +0
        del doubled
        assert trace.current == 4000  # the view keeps it alive
        summed = view + 1  # +4,000
        assert trace.current == trace.peak == 8000
        del view, summed
    assert trace.current == 0 and trace.peak == 8000
    assert traced_peak(lambda t: (t * 2) + 1, x) == 8000  # the temporary and the result exist together


class _Timeline(LiveBytes):
    """LiveBytes that also notes the live bytes after every operator."""

    def __init__(self, existing):
        super().__init__(existing)
        self.timeline = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        self.timeline.append((str(func), self.current, self.host_current, self.max_elements))
        return out


def test_replayed_meta_calls_count_the_bytes_their_kernels_count(monkeypatch):
    """A trace whose operators are answered by recipes (:class:`Recipes`) sees the same live bytes after every
    operator as one that runs every meta kernel: plain, lean and lean with fused up-sampling, parked skips too."""
    from tiny_models import tiny_unet, unet_inputs

    from linfuse.linearize import linearize
    from linfuse.linearize.twin import meta_twin
    from linfuse.pipelines.lean import LeanSettings, lean_mode
    from linfuse.pipelines.memory_trace import Recipes

    unet = tiny_unet("sd15")
    linearize(unet, method="linfusion")
    unet = meta_twin(unet)
    inputs = {k: v.to("meta") if isinstance(v, torch.Tensor) and v.ndim else v
              for k, v in unet_inputs(unet, height=24, width=40).items()}
    if "added_cond_kwargs" in inputs:
        inputs["added_cond_kwargs"] = {k: v.to("meta") for k, v in inputs["added_cond_kwargs"].items()}
    existing = [*unet.parameters(), *unet.buffers(), inputs["sample"], inputs["encoder_hidden_states"]]
    for settings in (None, LeanSettings(band_elements=300, chunk_elements=500),
                     LeanSettings(park_skips=True, fuse_upsampling=True, band_elements=300, chunk_elements=500)):
        runs = []
        for recipes in (Recipes(), None):  # None: the first run's recipes again
            if recipes is not None:
                monkeypatch.setattr(LiveBytes, "recipes", recipes)
            with torch.no_grad(), lean_mode(unet, settings), _Timeline(existing) as traced:
                unet(**inputs)
            runs.append(traced)
        fresh, replayed = runs
        assert replayed.replayed > 0.3 * len(replayed.timeline) > 0 and fresh.replayed < replayed.replayed
        assert replayed.timeline == fresh.timeline and replayed.peak == fresh.peak > 0


def test_meta_estimate_grows_linearly_with_pixels_for_a_linear_unet(student, teacher):
    linear, dense = MemoryModel(student), MemoryModel(teacher)
    small, large = linear.unet_memory(32, 32, 2)[0], linear.unet_memory(64, 64, 2)[0]
    assert 3.5 < large / small < 4.1  # 4× the tokens, ≈ 4× the memory
    # fused SDPA (flash / memory-efficient kernels) holds no N×N matrix: linear in the tokens as well
    assert 3.5 < dense.unet_memory(64, 64, 2)[0] / dense.unet_memory(32, 32, 2)[0] < 4.1


# ---- refusals before any work ------------------------------------------------------------------------------------


def count_unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls, handle


def test_softmax_models_are_refused_beyond_the_limit_with_the_memory_they_would_need(teacher):
    calls, handle = count_unet_calls(teacher)
    try:
        with pytest.raises(InvalidArgumentError, match=r"one attention matrix alone would take [0-9.]+ GiB"):
            generate_highres(teacher, params((4096, 4096)), progress=False)
        with pytest.raises(InvalidArgumentError, match="max_softmax_pixels"):
            generate_highres(teacher, params((512, 512)), HighResOptions(max_softmax_pixels=256 * 256),
                             progress=False)
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize("size, steps, strengths, needed, stage", [
    ((256, 256), 4, None, 10, "256x256 runs int(steps × strength) = int(4 × 0.1) = 0"),  # the default 0.4 → 0.1
    ((128, 96), 3, (0.3,), 4, "128x96 runs int(steps × strength) = int(3 × 0.3) = 0"),
    ((256, 128), 3, (0.1, 0.5), 10, "128x64 runs"),  # the weakest refinement decides, wherever it is
])
def test_too_few_steps_for_a_refinement_are_refused_before_any_work(student, size, steps, strengths, needed, stage):
    request = params(size)
    request.steps = steps
    calls, handle = count_unet_calls(student)
    try:
        with pytest.raises(InvalidArgumentError, match=rf"steps must be at least {needed} for this progressive job: "
                                                       rf"the refinement to {re.escape(stage)}"):
            generate_highres(student, request, HighResOptions(strengths=strengths), progress=False)
    finally:
        handle.remove()
    assert not calls
    request.steps = needed
    plan_job(student, request, HighResOptions(strengths=strengths))  # the minimum named is enough
    assert [minimum_steps(s) for s in (0.1, 0.3, 0.4, 1 / 3, 0.25, 1.0)] == [10, 4, 3, 3, 4, 1]


def test_dit_options_are_refused_on_a_unet_before_any_work(student):
    calls, handle = count_unet_calls(student)
    try:
        with pytest.raises(InvalidArgumentError, match="ntk_factor scales FLUX's RoPE; unet has none"):
            generate_highres(student, params((256, 256)), HighResOptions(ntk_factor=10), progress=False)
        with pytest.raises(InvalidArgumentError, match="proportional_attention is an option of CLEAR attention"):
            generate_highres(student, params((256, 256)), HighResOptions(proportional_attention=True), progress=False)
    finally:
        handle.remove()
    assert not calls


def test_a_job_that_cannot_fit_is_refused_with_the_largest_size_that_fits(student):
    request, options = params((2048, 1024)), HighResOptions(memory_limit=180 * 2**20)  # 177 MiB on the floor
    stages = plan_job(student, request, options)
    calls, handle = count_unet_calls(student)
    try:
        with pytest.raises(InsufficientMemoryError, match=r"largest 2:1 size that fits is (\d+)x(\d+)") as info:
            generate_highres(student, request, options, progress=False)
    finally:
        handle.remove()
    assert not calls and "may use at most 90% of the free memory: 162.0 MiB of 180.0 MiB" in str(info.value)
    width, height = map(int, str(info.value).split("size that fits is ")[1].split(".")[0].split("x"))
    assert width == 2 * height and width < 2048
    model = MemoryModel(student)
    fitting = plan_job(student, params((width, height)), options)
    assert estimate_memory(student, fitting, model=model, limit=options.memory_limit).fits
    bigger = plan_job(student, params((width + 16, height + 8)), options)
    assert not estimate_memory(student, bigger, model=model, limit=options.memory_limit).fits
    assert not estimate_memory(student, stages, model=model, limit=options.memory_limit).fits


@pytest.mark.parametrize("field, value, message", [
    ("upscale", "nearest", "upscale must be one of latent, pixel"),
    ("vae_tile", 4, "tile must be an integer >= 8"),
    ("vae_overlap", 40, r"overlap must be an integer in \[0, tile/2"),
    ("skip_residual", -1, r"skip_residual must be in \[0, 10\]"),
    ("memory_limit", 0, "memory_limit must be a positive number of bytes"),
])
def test_bad_options_name_the_parameter(student, field, value, message):
    with pytest.raises(InvalidArgumentError, match=message):
        generate_highres(student, params(), HighResOptions(**{field: value}), progress=False)


# ---- generation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upscale, skip_residual", [("latent", 0.0), ("pixel", 3.0)])
def test_progressive_generation_gives_the_requested_size_and_is_reproducible(student, upscale, skip_residual):
    options = HighResOptions(upscale=upscale, skip_residual=skip_residual, vae_tile=16, vae_overlap=4)
    image = generate_highres(student, params((256, 128)), options, progress=False)
    again = generate_highres(student, params((256, 128)), options, progress=False)
    assert isinstance(image, Image.Image) and image.size == (256, 128)
    assert image.tobytes() == again.tobytes()
    assert len(set(image.getdata())) > 100  # a picture, not a flat fill
    estimate = preflight_job(student, params((256, 128)), options, plan_job(student, params((256, 128)), options))
    assert [s.label for s in estimate.stages][:2] == ["base", "refine s=0.4"]
