"""2-D local attention: mask semantics, the two PyTorch references, and the Triton kernels (interpreter on CPU)."""

import pytest
import torch
import torch.nn.functional as F

from linfuse.errors import InvalidArgumentError
from linfuse.kernels import local_attention, local_attention_chunked, local_attention_dense, local_attention_mask
from linfuse.kernels import local_attention_ops as ops
from linfuse.kernels import local_attention_triton as lot
from linfuse.kernels.local_attention_reference import count_visible_pairs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qkv(batch, heads, n, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=g, dtype=dtype) for _ in range(3)]


def visible(mask, y, x, width, num_global=0):
    """Image keys (as (y, x)) seen by the image query at (y, x)."""
    row = mask[num_global + y * width + x, num_global:]
    return {(int(i) // width, int(i) % width) for i in row.nonzero().flatten()}


def test_circle_window_is_a_disc_truncated_at_borders():
    mask = local_attention_mask((5, 5), 2, "circle")
    assert visible(mask, 2, 2, 5) == {(2 + dy, 2 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}  # d² < 4
    assert visible(mask, 0, 0, 5) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert len(visible(local_attention_mask((9, 9), 3, "circle"), 4, 4, 9)) == 25  # |dy|, |dx| <= 2 for d² < 9


def test_square_window_is_clamped_into_the_grid_like_natten():
    mask = local_attention_mask((6, 7), 1, "square")
    assert visible(mask, 0, 0, 7) == {(y, x) for y in range(3) for x in range(3)}  # shifted, still 3×3
    assert visible(mask, 5, 6, 7) == {(y, x) for y in range(3, 6) for x in range(4, 7)}
    assert all(len(visible(mask, y, x, 7)) == 9 for y in range(6) for x in range(7))


def test_global_tokens_see_everything_and_are_seen_by_everyone():
    mask = local_attention_mask((4, 4), 1, "circle", num_global=3)
    assert mask[:3].all() and mask[:, :3].all()
    assert mask[3:, 3:].sum() == 16  # radius 1: each image query sees only itself


@pytest.mark.parametrize("window", ["circle", "square"])
@pytest.mark.parametrize("grid, radius, num_global", [((23, 17), 4, 5), ((6, 6), 9, 0)])
def test_banded_pair_count_equals_the_mask(window, grid, radius, num_global):
    """The benchmark's FLOP count comes from this banded count; it must equal the dense mask's."""
    assert count_visible_pairs(grid, radius, window, num_global) == local_attention_mask(
        grid, radius, window, num_global).sum()


@pytest.mark.parametrize("window", ["circle", "square"])
@pytest.mark.parametrize("grid, radius, num_global", [((7, 9), 3, 4), ((13, 5), 2, 0), ((6, 6), 9, 2)])
def test_chunked_reference_equals_dense_reference(window, grid, radius, num_global):
    q, k, v = qkv(2, 2, num_global + grid[0] * grid[1], 8)
    options = dict(grid=grid, radius=radius, window=window, num_global=num_global, scale=0.3)
    expected = local_attention_dense(q, k, v, **options)
    torch.testing.assert_close(local_attention_chunked(q, k, v, rows_per_chunk=3, **options), expected)


@pytest.mark.parametrize("window", ["circle", "square"])
def test_window_covering_the_grid_is_dense_attention(window):
    q, k, v = qkv(1, 2, 3 + 5 * 4, 8)
    out = local_attention(q, k, v, grid=(5, 4), radius=10, window=window, num_global=3, layout="bhnd")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_large_grid_cpu_path_is_banded_and_equals_dense():
    q, k, v = qkv(1, 1, 2 + 70 * 60, 8, dtype=torch.float32)  # above the dense-reference threshold
    out = local_attention(q, k, v, grid=(70, 60), radius=4, num_global=2, layout="bhnd", backend="reference")
    expected = local_attention_dense(q, k, v, grid=(70, 60), radius=4, window="circle", num_global=2, scale=8**-0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def nan_poisoned_outputs(monkeypatch):
    def poisoned(shape, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(lot, "_empty", poisoned)


def triton_case(q, k, v, layout, config, **options):
    q, k, v = (t.to(DEVICE).float().requires_grad_(True) for t in (q, k, v))
    if layout == "bnhd":
        q, k, v = (t.detach().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
    out = ops.local_attention_triton(q, k, v, layout=layout, config=config, **options)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    grads = torch.autograd.grad((out * grad_out).sum(), (q, k, v))
    ref_in = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    if layout == "bnhd":
        ref = local_attention_dense(*(t.transpose(1, 2) for t in ref_in), **options).transpose(1, 2)
    else:
        ref = local_attention_dense(*ref_in, **options)
    ref_grads = torch.autograd.grad((ref * grad_out.cpu().double()).sum(), ref_in)
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("nan_poisoned_outputs")
@pytest.mark.parametrize("config", range(len(lot.CONFIGS)))
@pytest.mark.parametrize("window", ["circle", "square"])
def test_triton_matches_fp64_for_every_config(config, window):
    q, k, v = qkv(1, 2, 3 + 11 * 13, 16, seed=config)
    triton_case(q, k, v, "bhnd", grid=(11, 13), radius=4, window=window, num_global=3, scale=0.25,
                config=lot.CONFIGS[config])


@pytest.mark.usefixtures("nan_poisoned_outputs")
@pytest.mark.parametrize(
    "grid, radius, num_global, layout",
    [((1, 1), 1, 0, "bhnd"), ((7, 3), 2, 0, "bnhd"), ((5, 9), 20, 1, "bhnd"), ((9, 7), 1, 65, "bnhd")],
)
@pytest.mark.parametrize("window", ["circle", "square"])
def test_triton_odd_grids_large_windows_and_layouts(grid, radius, num_global, layout, window):
    q, k, v = qkv(2, 1, num_global + grid[0] * grid[1], 8, seed=radius)
    triton_case(q, k, v, layout, grid=grid, radius=radius, window=window, num_global=num_global, scale=0.5,
                config=lot.CONFIGS[0])


def test_triton_half_precision_forward():
    q, k, v = (t.to(DEVICE) for t in qkv(1, 2, 2 + 8 * 8, 16, dtype=torch.float16))
    out = local_attention(q, k, v, grid=(8, 8), radius=3, num_global=2, layout="bhnd", backend="triton")
    assert out.dtype == torch.float16
    expected = local_attention_dense(q.cpu().double(), k.cpu().double(), v.cpu().double(), grid=(8, 8), radius=3,
                                     window="circle", num_global=2, scale=0.25)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=2**-9, atol=2**-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"radius": 0}, "radius must be an integer >= 1"), ({"window": "hexagon"}, "window must be one of circle, square"),
     ({"grid": (5, 5)}, "the sequence has 19 tokens but num_global"), ({"num_global": -1}, "num_global must be"),
     ({"scale": -1.0}, "scale must be a positive"), ({"backend": "magic"}, "backend must be one of")],
)
def test_bad_arguments_name_the_parameter(kwargs, message):
    q, k, v = qkv(1, 1, 3 + 4 * 4, 8)
    options = {"grid": (4, 4), "radius": 2, "num_global": 3, "layout": "bhnd", **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        local_attention(q, k, v, **options)


def test_forced_triton_refuses_fp64():
    q, k, v = qkv(1, 1, 16, 8)
    with pytest.raises(InvalidArgumentError, match="backend 'triton' cannot run here: dtype torch.float64"):
        local_attention(q, k, v, grid=(4, 4), radius=2, layout="bhnd", backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real-GPU shape: bf16 dots on a 128×128 grid, d = 128")
def test_bf16_on_gpu_matches_the_banded_reference():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 128 * 128 + 64, 4, 128, device="cuda", generator=g, dtype=torch.bfloat16)
               for _ in range(3))
    options = dict(grid=(128, 128), radius=16, num_global=64)
    out = local_attention(q, k, v, **options)
    ref = local_attention(q.float(), k.float(), v.float(), backend="reference", **options)
    torch.testing.assert_close(out.float(), ref, rtol=2**-7, atol=2**-6)
