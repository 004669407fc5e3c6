"""The floor rung: depth-first resnets written over their input, activations parked in host memory and read back
band by band; each piece equals what it replaces, the whole UNet equals its plain forward, removal leaves it
bit-identical, and a 16K trace shows one finest activation on the device."""

import json
import shutil
import tempfile
from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from test_lean import assert_lean_equals_plain, converted
from tiny_models import FIXTURES, unet_inputs
from torch import nn

from linfuse.errors import InvalidArgumentError
from linfuse.linearize import linearize
from linfuse.pipelines.lean import LeanSettings, disable_lean, enable_lean, lean_mode
from linfuse.pipelines.lean.conv import Joined, Upsampled
from linfuse.pipelines.lean.depth_first import Overwriting, depth_first_resnet
from linfuse.pipelines.lean.host_rows import DiskSpaceError, HostRows
from linfuse.pipelines.lean.norm import norm_act, streamed_group_stats
from linfuse.pipelines.lean.parts import Parts, spans
from linfuse.pipelines.memory_trace import trace
from linfuse.pipelines.preflight import rung_ladder

FLOOR = LeanSettings(band_elements=700, chunk_elements=900, floor=True)
FLOOR_PARKED = LeanSettings(band_elements=700, chunk_elements=900, floor=True, park_skips=True, fuse_upsampling=True)


def resnet_block(channels: int, out_channels: int, scale: float = 1.0, seed: int = 0) -> ResnetBlock2D:
    torch.manual_seed(seed)
    block = ResnetBlock2D(in_channels=channels, out_channels=out_channels, temb_channels=16, groups=4,
                          output_scale_factor=scale).eval()
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            nn.init.normal_(norm.weight)
            nn.init.normal_(norm.bias)
    return block


def test_streamed_group_statistics_equal_group_norm():
    x = torch.randn(1, 24, 31, 7, dtype=torch.float64) * 5 + 3
    norm = nn.GroupNorm(6, 24).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    bands = (x[:, :, top:bottom] for top, bottom in spans(31, 4))  # uneven: 4 · 7 rows + 3
    stats = streamed_group_stats(bands, norm, 24, x.device)
    assert torch.allclose(norm_act(stats)(x), norm(x), atol=1e-5)


def test_host_rows_give_back_every_band_exactly_with_zero_rows_outside():
    x = torch.randn(1, 12, 19, 5).to(torch.bfloat16)
    parked = HostRows(Parts([x[:, :5].clone(), x[:, 5:].clone()]), band_elements=130)
    assert (parked.channels, parked.height, parked.width) == (12, 19, 5)
    assert torch.equal(parked.rows(0, 19), x)
    band = parked.rows(-2, 4)
    assert torch.equal(band[:, :, 2:], x[:, :, :4]) and not band[:, :, :2].any()
    assert torch.equal(parked.rows(17, 22)[:, :, :2], x[:, :, 17:]) and not parked.rows(17, 22)[:, :, 2:].any()


@pytest.mark.parametrize("channels, out_channels, scale", [(16, 16, 1.0), (24, 16, 2.0), (16, 24, 1.0)])
def test_a_depth_first_resnet_equals_the_block(channels, out_channels, scale):
    block = resnet_block(channels, out_channels, scale)
    x, temb = torch.randn(1, channels, 23, 9), torch.randn(1, 16)
    with torch.no_grad():
        expected = block(x, temb)
        out = depth_first_resnet(block, Parts([x[:, :5].clone(), x[:, 5:].clone()]), temb, 200, writable=False)
    assert torch.allclose(out.tensor(), expected, atol=1e-5), (out.tensor() - expected).abs().max()


def test_a_writable_resnet_writes_its_output_over_its_input():
    block = resnet_block(16, 16)
    x, temb = torch.randn(1, 16, 23, 9), torch.randn(1, 16)
    held = Parts([x[:, :7].clone(), x[:, 7:].clone()])
    storages = [t.untyped_storage().data_ptr() for t in held.tensors]
    with torch.no_grad():
        expected = block(x, temb)
        out = depth_first_resnet(block, held, temb, 150, writable=True)  # bands of 1 row: the halo spans bands
    assert [t.untyped_storage().data_ptr() for t in out.tensors] == storages
    assert torch.allclose(out.tensor(), expected, atol=1e-5)


def test_an_up_resnet_over_the_running_activation_with_its_skip_in_host_memory_equals_the_block():
    """The up path's join: the running activation (overwritten) ‖ the skip read back band by band."""
    block = resnet_block(32, 16)
    h, skip, temb = torch.randn(1, 16, 17, 11), torch.randn(1, 16, 17, 11), torch.randn(1, 16)
    with torch.no_grad():
        expected = block(torch.cat([h, skip], dim=1), temb)
        joined = Joined([Parts.of(h.clone()), HostRows(Parts.of(skip), 300)])
        out = depth_first_resnet(block, joined, temb, 400, writable=True)
    assert out.tensors[0].untyped_storage().data_ptr() == joined.sources[0].first.untyped_storage().data_ptr()
    assert torch.allclose(out.tensor(), expected, atol=1e-5)


def test_a_resnet_reading_a_fused_up_sampler_from_host_memory_equals_the_block():
    block = resnet_block(16, 8)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    source, skip, temb = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 12, 10), torch.randn(1, 16)
    with torch.no_grad():
        up = conv(nn.functional.interpolate(source, size=(12, 10), mode="nearest"))
        expected = block(torch.cat([up, skip], dim=1), temb)
        joined = Joined([Upsampled(HostRows(Parts.of(source), 100), conv, (12, 10)), Parts.of(skip)])
        out = depth_first_resnet(block, joined, temb, 300, writable=True)  # not writable over an up-sampler
    assert torch.allclose(out.tensor(), expected, atol=1e-5)


def test_overwritten_rows_are_read_from_the_kept_halo_and_older_ones_refuse():
    x = torch.arange(2 * 8 * 3, dtype=torch.float32).view(1, 2, 8, 3)
    head = Parts.of(x.clone())
    rows = Overwriting(head, head, halo=2)
    rows.write(0, torch.zeros(1, 2, 3, 3))
    assert torch.equal(rows.rows(1, 5), x[:, :, 1:5])  # rows 1–2 kept, 3–4 not yet written
    rows.write(3, torch.zeros(1, 2, 2, 3))
    with pytest.raises(RuntimeError, match="overwritten"):
        rows.rows(2, 4)


@pytest.mark.parametrize("where", ["device", "host", "disk"])
@pytest.mark.parametrize("kind, method", [("sd15", "linfusion"), ("sdxl", "linfusion"), ("sd15", None)])
def test_floor_unet_equals_the_plain_unet(kind, method, where, tmp_path):
    """Parked nowhere, in host memory, and on disk (the CPU's floor: unnamed files, gone after the call)."""
    settings = {"device": FLOOR, "host": FLOOR_PARKED, "disk": replace(FLOOR_PARKED, park_dir=str(tmp_path))}[where]
    assert_lean_equals_plain(converted(kind, method), settings)
    assert list(tmp_path.iterdir()) == []


def test_parking_on_a_disk_without_room_refuses_before_writing(tmp_path, monkeypatch):
    """The free space is read from the file system (here made to report 1 MiB: filling a real disk is not an
    option in a test), and the refusal names the directory and the way out."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**40, 2**40 - 2**20, 2**20))
    x = Parts.of(torch.zeros(1, 64, 64, 128))  # 2 MiB
    with pytest.raises(DiskSpaceError, match=f"on disk in {tmp_path} and needs 0.00 GiB more .* TMPDIR"):
        HostRows(x, 4096, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_park_dir_needs_the_floor_with_parking_and_a_directory(tmp_path):
    with pytest.raises(InvalidArgumentError, match="park_dir must be an existing directory"):
        LeanSettings(park_dir=str(tmp_path))
    with pytest.raises(InvalidArgumentError, match="park_dir must be an existing directory"):
        LeanSettings(floor=True, park_skips=True, park_dir=str(tmp_path / "missing"))


def test_installing_and_removing_the_floor_leaves_the_unet_bit_identical():
    unet = converted("sd15", "linfusion")
    inputs = unet_inputs(unet, batch=2, height=16, width=16)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        plain = unet(**inputs).sample
        enable_lean(unet, FLOOR_PARKED)
        floor = unet(**inputs).sample
        disable_lean(unet)
        again = unet(**inputs).sample
    assert "forward" not in unet.__dict__ and torch.equal(again, plain) and not torch.equal(floor, plain)
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_the_floor_is_the_last_rung_and_a_mode_of_its_own():
    cuda, cpu = rung_ladder("auto", "cuda"), rung_ladder("auto", "cpu")
    assert cuda[-1].floor and cuda[-1].park_skips and not any(rung.floor for rung in cuda[:-1] if rung)
    assert cuda[-1].park_dir is None and cpu[-1].park_dir == tempfile.gettempdir()
    assert rung_ladder("floor", "cuda") == [cuda[-1]]
    assert cuda[-1].offload and not any(rung.offload for rung in [*cuda[:-1], *cpu] if rung)  # CUDA only
    assert cuda[-1].describe() == "floor, skips parked in host memory, up-sampling fused, resnets depth-first, " \
        "text encoders and VAE off the device"
    assert cpu[-1].describe() == "floor, skips parked on disk, up-sampling fused, resnets depth-first"


def test_at_16k_the_floor_holds_about_one_finest_activation_on_the_device():
    """SD-1.5 at 16384² in fp16: the finest activation (320 × 2048² × 2 B) is 2.5 GiB; the fused rung holds 3.3 of
    them, the floor at most 1.3 (the running activation and its bands), and no tensor reaches 2^31 elements."""
    config = json.loads((FIXTURES / "configs" / "sd15_unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).eval().to(torch.float16)
        linearize(unet, method="linfusion")
    meta = {"device": "meta", "dtype": torch.float16}
    sample, context = torch.empty(2, 4, 2048, 2048, **meta), torch.empty(2, 77, 768, **meta)
    finest = 320 * 2048 * 2048 * 2
    peaks = {}
    for name, settings in (("fused", rung_ladder("auto", "cuda")[-2]), ("floor", rung_ladder("auto", "cuda")[-1])):
        with lean_mode(unet, settings):
            traced = trace(lambda s, c: unet(s, torch.tensor(500), c).sample, sample, context,
                           existing=[*unet.parameters(), *unet.buffers()])
        peaks[name] = traced.peak / finest
        assert traced.max_elements < 2**31
    assert peaks["fused"] > 3 and peaks["floor"] < 1.3, peaks
