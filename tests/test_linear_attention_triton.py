"""Triton linear-attention kernels (interpreter on CPU, real kernels where CUDA is present) vs the fp64 formula."""

import pytest
import torch
from test_linear_attention import direct_formula, make_qkv

from linfuse.errors import InvalidArgumentError
from linfuse.kernels import linear_attention, linear_attention_readout, linear_attention_state
from linfuse.kernels import linear_attention_ops as ops
from linfuse.kernels import linear_attention_triton as lat

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def nan_poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an element a kernel forgets to write fails the test."""
    def poisoned(shape, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(lat, "_empty", poisoned)


def on_device(*tensors, grad=False):
    return [t.to(DEVICE).requires_grad_(grad) for t in tensors]


def reference_and_grads(q, k, v, feature_map, layout, grad_out):
    q, k, v = (t.detach().double().cpu().requires_grad_(True) for t in (q, k, v))
    out = direct_formula(q, k, v, feature_map, 1e-4, layout)
    grads = torch.autograd.grad((out * grad_out.double().cpu()).sum(), (q, k, v))
    return out, grads


@pytest.mark.parametrize("config", range(len(lat.CONFIGS)))
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("feature_map", ["elu1", "relu", "identity"])
def test_forward_and_backward_match_fp64_for_every_config(config, layout, feature_map):
    # One batch and one head so the state pass splits N over several programs; d_k = 20 and d_v = 12 are padded.
    q, k, v = make_qkv(1, 1, 45, 70, 20, 12, layout, positive=feature_map == "identity", seed=config)
    q, k, v = on_device(q, k, v, grad=True)
    out = ops.linear_attention_triton(q, k, v, feature_map=feature_map, eps=1e-4, layout=layout,
                                      config=lat.CONFIGS[config])
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad((out * grad_out.to(DEVICE)).sum(), (q, k, v))
    expected, expected_grads = reference_and_grads(q, k, v, feature_map, layout, grad_out)
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 63, 65])
def test_token_counts_that_are_not_multiples_of_the_tile(n):
    q, k, v = on_device(*make_qkv(2, 3, n, n, 16, 16, "bnhd", seed=n))
    out = linear_attention(q, k, v, backend="triton")
    torch.testing.assert_close(out.double().cpu(), direct_formula(q.cpu(), k.cpu(), v.cpu(), "elu1", 1e-4, "bnhd"),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_their_dtype_and_fp32_state(dtype):
    q, k, v = on_device(*make_qkv(1, 2, 40, 40, 32, 32, "bhnd", dtype=dtype))
    out = linear_attention(q, k, v, layout="bhnd", backend="triton")
    assert out.dtype == dtype
    expected = direct_formula(q.cpu(), k.cpu(), v.cpu(), "elu1", 1e-4, "bhnd")
    tol = 2**-7 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(out.double().cpu(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_strided_views_read_without_copies():
    q, k, v = make_qkv(1, 2, 30, 30, 16, 16, "bhnd")
    q, k, v = on_device(*(t.transpose(1, 2) for t in (q, k, v)))  # non-contiguous (B, N, H, d) views
    assert not q.is_contiguous()
    out = linear_attention(q, k, v, backend="triton")
    torch.testing.assert_close(out, linear_attention(q, k, v, backend="reference"), rtol=1e-5, atol=1e-6)


def test_forced_triton_that_cannot_run_says_why(monkeypatch):
    q, k, v = make_qkv(1, 1, 4, 4, 4, 4, "bnhd", dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="backend 'triton' cannot run here: dtype torch.float64"):
        linear_attention(q, k, v, backend="triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(InvalidArgumentError, match="tensors are on the CPU"):
            linear_attention(q.float(), k.float(), v.float(), backend="triton")
        # "auto" on CPU tensors never picks Triton: the reference runs, even for fp64.
        assert linear_attention(q, k, v).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real-GPU shapes: bf16 tensor-core dots, N = 2^20")
def test_large_bf16_problem_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1 << 20, 8, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    out = linear_attention(q, k, v)
    ref = linear_attention(q, k, v, backend="reference")
    torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=2**-7 * ref.abs().max().item())


def test_linfusion_processors_go_through_the_kernel_dispatch(monkeypatch):
    """A linearized UNet gives the same output with the Triton backend as with the reference (as on CUDA)."""
    from tiny_models import tiny_unet, unet_inputs

    import linfuse

    unet = tiny_unet("sd15").to(DEVICE)
    linfuse.linearize(unet)
    inputs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in unet_inputs(unet, batch=1).items()}
    calls = []
    kernel = ops.linear_attention_triton
    monkeypatch.setattr(ops, "linear_attention_triton", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    with torch.no_grad():
        monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "reference")
        reference = unet(**inputs).sample
        monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "triton")
        assert not calls
        with_triton = unet(**inputs).sample
    assert len(calls) == 16  # every converted layer ran the Triton kernel
    torch.testing.assert_close(with_triton, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
def test_state_and_readout_halves_run_their_kernels_and_make_the_whole(dtype, layout, monkeypatch):
    """Keys taken in two parts: the Triton state sums add up to the reference's, fp32 whatever the input; the readout
    of their mean is linear attention over all keys, in q's dtype. Each half launches its kernel alone."""
    q, k, v = on_device(*make_qkv(2, 3, 37, 50, 24, 20, layout, dtype=dtype, seed=4))
    seq_dim = 1 if layout == "bnhd" else 2
    launched = []
    run = lat.Launch.run
    monkeypatch.setattr(lat.Launch, "run", lambda self: launched.append(self.name) or run(self))
    parts = [linear_attention_state(part_k, part_v, feature_map="elu1", seq_dim=seq_dim, backend="triton")
             for part_k, part_v in zip(k.split([30, 20], seq_dim), v.split([30, 20], seq_dim), strict=True)]
    assert launched == ["_state_kernel", "_state_kernel"]
    state, key_sum = (parts[0][i] + parts[1][i] for i in range(2))
    assert state.dtype == key_sum.dtype == torch.float32
    assert state.shape == (2, 3, 24, 20) and key_sum.shape == (2, 3, 24)
    expected = linear_attention_state(k, v, feature_map="elu1", seq_dim=seq_dim, backend="reference", chunk_size=7)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    for got, want in zip((state, key_sum), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    out = linear_attention_readout(q, state / 50, key_sum / 50, feature_map="elu1", eps=1e-4, seq_dim=seq_dim,
                                   backend="triton")
    assert launched[2:] == ["_output_kernel"] and out.dtype == dtype
    whole = direct_formula(q.cpu(), k.cpu(), v.cpu(), "elu1", 1e-4, layout)
    tol = 1e-4 if dtype == torch.float32 else 2**-9
    torch.testing.assert_close(out.double().cpu(), whole, rtol=tol, atol=tol * whole.abs().max().item())
    written = torch.full_like(out, float("nan"))
    assert linear_attention_readout(q, state / 50, key_sum / 50, feature_map="elu1", eps=1e-4, seq_dim=seq_dim,
                                    backend="triton", out=written) is written
    torch.testing.assert_close(written, out, rtol=0, atol=0)


def test_halves_refuse_a_forced_triton_gradient_and_mixed_devices():
    q, k, v = make_qkv(1, 2, 8, 8, 16, 16, "bnhd")
    with pytest.raises(InvalidArgumentError, match="state and readout kernels have no backward"):
        linear_attention_state(k.requires_grad_(True), v, feature_map="relu", backend="triton")
    state, key_sum = linear_attention_state(k, v, feature_map="relu")  # "auto" differentiates through the reference
    assert state.requires_grad
    with pytest.raises(InvalidArgumentError, match="q, state and key_sum must be on one device; got cpu, meta, cpu"):
        linear_attention_readout(q, state.detach().to("meta"), key_sum.detach(), feature_map="relu", eps=1e-4)


@pytest.mark.parametrize("op, args", [
    ("linear_attention_op", lambda q, k, v: (q, k, v, "elu1", 1e-4, "bnhd", "", False)),
    ("linear_attention_state_op", lambda q, k, v: (k, v, "elu1", "bnhd", "", False)),
])
def test_the_kernels_return_what_their_shape_functions_declare(op, args):
    """d = 40 is padded to the kernels' blocks inside; what the ops return must still be the declared unpadded,
    contiguous shapes (a compiled graph allocates and checks by them)."""
    q, k, v = (torch.randn(1, 70, 2, 40) for _ in range(3))
    torch.library.opcheck(getattr(ops, op), args(q, k, v), test_utils=("test_faketensor",))
