"""Reference linear attention against a direct O(N²) fp64 formula."""

import pytest
import torch

from linfuse.errors import InvalidArgumentError
from linfuse.kernels import FEATURE_MAPS, linear_attention


def direct_formula(q, k, v, feature_map, eps, layout):
    """O = A v / (A 1 + eps) with A_ij = φ(q_i)·φ(k_j) / N_k, in fp64, materialising A."""
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    phi = FEATURE_MAPS[feature_map]
    q, k, v = (t.double() for t in (q, k, v))
    scores = phi(q) @ phi(k).transpose(-1, -2) / k.shape[-2]
    out = scores @ v / (scores.sum(-1, keepdim=True) + eps)
    return out.transpose(1, 2) if layout == "bnhd" else out


def make_qkv(batch, heads, n_q, n_k, d, d_v, layout, dtype=torch.float32, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def tensor(n, dim):
        t = torch.randn(batch, heads, n, dim, generator=g, dtype=torch.float64)
        t = t.abs() if positive else t
        return (t.transpose(1, 2) if layout == "bnhd" else t).to(dtype)

    return tensor(n_q, d), tensor(n_k, d), tensor(n_k, d_v)


@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
def test_matches_direct_formula_with_ragged_chunks(layout, feature_map):
    # N = 37 keys with chunk 8: the last chunk is partial; queries 29 != keys; d_v != d_k.
    q, k, v = make_qkv(2, 3, 29, 37, 16, 12, layout, positive=feature_map == "identity")
    out = linear_attention(q, k, v, feature_map=feature_map, layout=layout, chunk_size=8)
    expected = direct_formula(q, k, v, feature_map, 1e-4, layout)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1000])
def test_result_does_not_depend_on_chunk_size(chunk_size):
    q, k, v = make_qkv(1, 2, 50, 50, 8, 8, "bnhd")
    base = linear_attention(q, k, v, chunk_size=50)
    torch.testing.assert_close(linear_attention(q, k, v, chunk_size=chunk_size), base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["bnhd", "bhnd"])
def test_half_precision_inputs_accumulate_in_fp32(dtype, layout):
    q, k, v = make_qkv(2, 2, 300, 300, 32, 32, layout, dtype=dtype)
    out = linear_attention(q, k, v, layout=layout, chunk_size=64)
    assert out.dtype == dtype
    expected = direct_formula(q, k, v, "elu1", 1e-4, layout)  # from the same rounded inputs, in fp64
    # The only error left is rounding the output once to the half type (2^-8 for bf16, 2^-11 for fp16, relative).
    tol = 2**-8 if dtype == torch.bfloat16 else 2**-11
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_mean_form_eps_equals_sum_form_with_eps_times_n():
    q, k, v = make_qkv(1, 1, 10, 40, 4, 4, "bhnd")
    phi_q, phi_k = FEATURE_MAPS["elu1"](q.double()), FEATURE_MAPS["elu1"](k.double())
    sum_form = (phi_q @ (phi_k.transpose(-1, -2) @ v.double())) / (phi_q @ phi_k.sum(-2, keepdim=True).mT + 0.5 * 40)
    out = linear_attention(q, k, v, eps=0.5, layout="bhnd")
    torch.testing.assert_close(out.double(), sum_form, rtol=1e-5, atol=1e-6)


def test_gradients_match_direct_formula():
    q, k, v = make_qkv(1, 2, 21, 21, 8, 8, "bnhd", dtype=torch.float64)
    for t in (q, k, v):
        t.requires_grad_(True)
    grad_out = torch.randn(q.shape[:-1] + (8,), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((linear_attention(q, k, v, chunk_size=4).double() * grad_out).sum(), (q, k, v))
    want = torch.autograd.grad((direct_formula(q, k, v, "elu1", 1e-4, "bnhd") * grad_out).sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_strided_inputs_are_read_without_error():
    q, k, v = make_qkv(1, 2, 16, 16, 8, 8, "bhnd")
    q_t, k_t, v_t = (t.transpose(1, 2) for t in (q, k, v))  # non-contiguous bnhd views
    expected = linear_attention(q, k, v, layout="bhnd")
    torch.testing.assert_close(linear_attention(q_t, k_t, v_t).transpose(1, 2), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layout": "nbhd"}, "layout must be one of bnhd, bhnd"),
        ({"feature_map": "softmax"}, "feature_map must be one of elu1, relu, identity"),
        ({"eps": -1.0}, "eps must be a number >= 0"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"backend": "cuda-magic"}, "backend must be one of auto, reference, triton"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, message):
    q, k, v = make_qkv(1, 1, 4, 4, 4, 4, "bnhd")
    with pytest.raises(InvalidArgumentError, match=message):
        linear_attention(q, k, v, **kwargs)


def test_bad_shapes_and_dtypes_are_refused():
    q, k, v = make_qkv(1, 2, 4, 6, 4, 4, "bnhd")
    with pytest.raises(InvalidArgumentError, match="k and v need the same number of tokens"):
        linear_attention(q, k, v[:, :5])
    with pytest.raises(InvalidArgumentError, match="q, k and v must share one dtype"):
        linear_attention(q.half(), k, v)
    with pytest.raises(InvalidArgumentError, match="q must be a 4-D tensor"):
        linear_attention(q[0], k, v)
    with pytest.raises(InvalidArgumentError, match="q and k need the same head dimension"):
        linear_attention(q[..., :3], k, v)
    with pytest.raises(InvalidArgumentError, match="must be a floating-point tensor"):
        linear_attention(q.long(), k, v)


def test_backend_environment_variable_is_validated(monkeypatch):
    q, k, v = make_qkv(1, 1, 4, 4, 4, 4, "bnhd")
    monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "reference")
    reference = linear_attention(q, k, v)
    monkeypatch.setenv("LINFUSE_LINEAR_ATTENTION_BACKEND", "nope")
    with pytest.raises(InvalidArgumentError, match="LINFUSE_LINEAR_ATTENTION_BACKEND must be one of"):
        linear_attention(q, k, v)
    torch.testing.assert_close(linear_attention(q, k, v, backend="auto"), reference)


def test_on_the_meta_device_the_reference_traces_two_chunks_with_the_same_peak(monkeypatch):
    """The memory preflight traces the model on meta tensors; skipping the middle chunks there must not change the
    traced peak (each chunk allocates the same shapes), only the time."""
    import importlib

    from linfuse.pipelines.memory_trace import traced_peak

    # (the package re-exports a function of the same name, so the module comes from importlib)
    reference = importlib.import_module("linfuse.kernels.linear_attention_reference")

    q, k, v = (torch.empty(2, 4096, 4, 16, device="meta") for _ in range(3))

    def run():
        return reference.linear_attention_reference(q, k, v, feature_map="elu1", eps=1e-6, seq_dim=1, chunk_size=256)

    calls = []
    original = reference._chunks
    monkeypatch.setattr(reference, "_chunks", lambda n, c, meta=False: calls.append(list(original(n, c, meta)))
                        or original(n, c, meta))
    fast = traced_peak(run)
    assert [len(c) for c in calls] == [2, 2]
    monkeypatch.setattr(reference, "_chunks", lambda n, c, meta=False: original(n, c, False))
    assert traced_peak(run) == fast > 0
    assert run().shape == (2, 4096, 4, 16)
