"""The linear-attention variants: each processor's attend() against its formula written as an explicit N×N sum."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_unet, unet_inputs

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.linearize import get_method, linearized_layers, save_linear_weights
from linfuse.linearize.grid import TokenGrid
from linfuse.linearize.variants import VARIANTS

BATCH, HEADS, HEAD_DIM, GRID = 2, 2, 8, (3, 4)
DIM, COUNT = HEADS * HEAD_DIM, GRID[0] * GRID[1]
VARIANT_NAMES = [name for name, _, _ in VARIANTS]
EPS = 1e-4


def make_processor(name: str, seed: int = 0, randomize: bool = True, **options):
    """The variant's processor on (3, 4) tokens; every parameter random (branches on) unless randomize is False."""
    torch.manual_seed(seed)
    processor = get_method(name).processor_class(dim=DIM, heads=HEADS, **options)
    grid = TokenGrid()
    grid.sizes = [GRID]
    processor.__dict__["_token_grid"] = grid
    if randomize:
        with torch.no_grad():
            for param in processor.parameters():
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if param.ndim == 1 and name == "l2vit" else 0.0))
    else:
        processor.initialize(None)
    return processor.double()


def inputs(seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH, COUNT, HEADS, HEAD_DIM, generator=g, dtype=torch.float64) for _ in range(3))
    x = torch.randn(BATCH, COUNT, DIM, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), x.to(dtype)


# ---- explicit references: weights A (B, heads, N, N), loops over window offsets for convolutions -----------------


def normalised(weights, v, eps=EPS):
    """O_i = Σ_j A_ij v_j / (Σ_j A_ij + ε·N), per (batch, head); v (B, N, heads, d)."""
    numerator = torch.einsum("bhij,bjhd->bihd", weights, v)
    return numerator / (weights.sum(-1).transpose(1, 2).unsqueeze(-1) + eps * v.shape[1])


def pairwise(phi_q, phi_k):
    return torch.einsum("bihd,bjhd->bhij", phi_q, phi_k)


def depthwise(tokens, weight, bias=None):
    """Σ_{a,b} w[c, a, b] · t[(y + a − r, x + b − r), c] (+ bias), zero outside the grid; tokens (B, N, C)."""
    height, width = GRID
    radius = weight.shape[-1] // 2
    image = tokens.view(tokens.shape[0], height, width, -1)
    out = torch.zeros_like(image)
    for y in range(height):
        for x in range(width):
            for a in range(-radius, radius + 1):
                for b in range(-radius, radius + 1):
                    if 0 <= y + a < height and 0 <= x + b < width:
                        out[:, y, x] += weight[:, 0, a + radius, b + radius] * image[:, y + a, x + b]
    out = out.view_as(tokens)
    return out if bias is None else out + bias


def per_head(tensor):
    return tensor.reshape(BATCH, COUNT, HEADS, HEAD_DIM)


def reference_sana(p, q, k, v, x):
    return normalised(pairwise(F.relu(q), F.relu(k)), v, p.eps)


def reference_slab(p, q, k, v, x):
    conv = p.value_conv.conv
    local = torch.stack([depthwise(v[:, :, h], conv.weight, conv.bias) for h in range(HEADS)], dim=2)
    return reference_sana(p, q, k, v, x) + local


def reference_inline(p, q, k, v, x):
    scale = HEAD_DIM**-0.5
    scores = torch.einsum("bihd,bjhd->bhij", q, k)
    weights = (scale / COUNT) * (scores - scores.mean(-1, keepdim=True)) + 1.0 / COUNT  # q·k̄ = mean_j q·k_j
    out = torch.einsum("bhij,bjhd->bihd", weights, v)
    predictor = p.kernel_predictor
    size = p.kernel_size
    local = []
    for b in range(BATCH):
        kernel = predictor[2](F.gelu(predictor[0](x[b].mean(0)))).view(DIM, 1, size, size)
        local.append(depthwise(v[b:b + 1].reshape(1, COUNT, DIM), kernel))
    return out + per_head(torch.cat(local))


def reference_rala(p, q, k, v, x):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    query_mean = phi_q.mean(1)  # (B, heads, d)
    alpha = COUNT * torch.softmax(torch.einsum("bjhd,bhd->bhj", phi_k, query_mean) / math.sqrt(HEAD_DIM), dim=-1)
    weights = pairwise(phi_q, phi_k) * alpha.unsqueeze(2)  # A_ij = α_j φ(q_i)·φ(k_j)
    conv = p.lepe.conv
    attention = normalised(weights, v, p.eps) + per_head(depthwise(v.reshape(BATCH, COUNT, DIM), conv.weight,
                                                                   conv.bias))
    return attention * (1 + per_head(p.gate(x)))


def reference_nalaformer(p, q, k, v, x):
    weights = torch.zeros(BATCH, HEADS, COUNT, COUNT, dtype=q.dtype)
    for b in range(BATCH):
        for h in range(HEADS):
            for i in range(COUNT):
                norm = q[b, i, h].norm()
                power = 3 * (0.5 + torch.tanh(norm))
                for j in range(COUNT):
                    same_sign = (q[b, i, h] * k[b, j, h]) > 0
                    terms = (q[b, i, h].abs() / norm) ** power * k[b, j, h].abs() ** 3
                    weights[b, h, i, j] = terms[same_sign].sum()
    conv = p.lepe.conv
    return normalised(weights, v, p.eps) + per_head(depthwise(v.reshape(BATCH, COUNT, DIM), conv.weight, conv.bias))


def reference_l2vit(p, q, k, v, x):
    weights = pairwise(F.relu(q), F.relu(k))
    denominator = weights.sum(-1).clamp_min(p.floor).transpose(1, 2).unsqueeze(-1)  # (B, N, heads, 1)
    glob = torch.einsum("bhij,bjhd->bihd", weights, v) / denominator * p.temperature.view(1, 1, HEADS, 1)
    lcm = p.concentration
    hidden = F.gelu(depthwise(glob.reshape(BATCH, COUNT, DIM), lcm.conv1.conv.weight, lcm.conv1.conv.bias))
    mean = hidden.mean(dim=(1, 2), keepdim=True)
    variance = hidden.var(dim=(1, 2), unbiased=False, keepdim=True)
    hidden = (hidden - mean) / torch.sqrt(variance + lcm.norm.eps) * lcm.norm.weight + lcm.norm.bias
    return glob + per_head(depthwise(hidden, lcm.conv2.conv.weight, lcm.conv2.conv.bias))


def reference_transnormer(p, q, k, v, x):
    weights = pairwise(F.elu(q) + 1, F.elu(k) + 1) / COUNT
    out = torch.einsum("bhij,bjhd->bihd", weights, v)
    rms = torch.sqrt(out.pow(2).mean(-1, keepdim=True) + p.eps)
    return out / rms * p.gain.view(HEADS, HEAD_DIM)


REFERENCES = {name: globals()[f"reference_{name}"] for name in VARIANT_NAMES}


def test_every_registered_variant_has_a_reference_and_a_formula_docstring():
    assert set(VARIANT_NAMES) == {"sana", "slab", "inline", "rala", "nalaformer", "l2vit", "transnormer"}
    for _, processor_class, _ in VARIANTS:
        doc = __import__(processor_class.__module__, fromlist=["_"]).__doc__
        assert "O" in doc and "=" in doc, processor_class


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_attend_matches_the_explicit_quadratic_formula_in_fp64(name):
    processor = make_processor(name)
    q, k, v, x = inputs()
    with torch.no_grad():
        out = processor.attend(q, k, v, x)
        expected = REFERENCES[name](processor, q, k, v, x)
    assert out.shape == (BATCH, COUNT, HEADS, HEAD_DIM) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)


def test_l2vit_floor_is_active_on_some_rows_and_not_others():
    processor = make_processor("l2vit", floor=2.0)
    q, k, v, x = inputs()
    sums = pairwise(F.relu(q), F.relu(k)).sum(-1)
    assert (sums < 2.0).any() and (sums > 2.0).any()  # both branches of max(·, floor) are exercised
    with torch.no_grad():
        torch.testing.assert_close(processor.attend(q, k, v, x), reference_l2vit(processor, q, k, v, x),
                                   rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["slab", "inline", "rala", "nalaformer", "l2vit"])
def test_initialised_variants_start_as_their_global_term(name):
    """Local branches start at zero and gates at identity: the output is the kernelised attention alone."""
    processor = make_processor(name, randomize=False)
    q, k, v, x = inputs()
    with torch.no_grad():
        out = processor.attend(q, k, v, x)
    if name == "slab":
        expected = reference_sana(processor, q, k, v, x)
    elif name == "l2vit":
        weights = pairwise(F.relu(q), F.relu(k))
        expected = torch.einsum("bhij,bjhd->bihd", weights, v) / weights.sum(-1).clamp_min(100.0).transpose(
            1, 2).unsqueeze(-1)
    else:
        expected = REFERENCES[name](processor, q, k, v, x)
        branch = {"inline": "kernel_predictor.2.weight", "rala": "gate.weight", "nalaformer": "lepe.conv.weight"}
        assert torch.count_nonzero(processor.get_parameter(branch[name])) == 0
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_fp32_and_bf16_follow_the_fp64_result(name):
    processor = make_processor(name)
    q, k, v, x = inputs()
    with torch.no_grad():
        exact = processor.attend(q, k, v, x)
        single = processor.float().attend(*(t.float() for t in (q, k, v, x)))
        half = processor.bfloat16().attend(*(t.bfloat16() for t in (q, k, v, x)))
    assert single.dtype == torch.float32 and half.dtype == torch.bfloat16
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-5)
    scale = exact.abs().max()
    assert torch.isfinite(half).all() and (half.double() - exact).abs().max() < 0.05 * scale


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variants_convert_a_unet_save_load_exactly_and_unlinearize(name, tmp_path):
    unet = tiny_unet("sd15")
    feed = unet_inputs(unet, height=8, width=12)  # 8×12 latent: non-square grids at every depth
    with torch.no_grad():
        teacher_out = unet(**feed).sample
    report = linfuse.linearize(unet, method=name)
    assert report.layers_replaced == 16 and all(layer.endswith("attn1") for layer in report.layers)
    torch.manual_seed(3)
    with torch.no_grad():
        for _, attn in linearized_layers(unet):
            for param in attn.processor.parameters():
                param.add_(0.1 * torch.randn_like(param))
        student_out = unet(**feed).sample
    assert torch.isfinite(student_out).all() and not torch.allclose(student_out, teacher_out)
    save_linear_weights(unet, tmp_path / name)
    other = tiny_unet("sd15")
    linfuse.linearize(other, weights=tmp_path / name, method=name)
    with torch.no_grad():
        assert torch.equal(other(**feed).sample, student_out)
    linfuse.unlinearize(unet)
    with torch.no_grad():
        assert torch.equal(unet(**feed).sample, teacher_out)


@pytest.mark.parametrize("name, options, message", [
    ("slab", {"kernel_size": 4}, "kernel_size must be an odd integer"),
    ("inline", {"kernel_size": 0}, "kernel_size must be an odd integer"),
    ("sana", {"eps": 0.0}, "eps must be a finite number > 0"),
    ("rala", {"eps": float("nan")}, "eps must be a finite number > 0"),
    ("l2vit", {"floor": -1}, "floor must be a finite number > 0"),
    ("transnormer", {"eps": "small"}, "eps must be a finite number > 0"),
    ("nalaformer", {"radius": 3}, "method 'nalaformer' takes the options kernel_size, eps; got radius"),
])
def test_bad_options_are_refused_before_the_model_changes(name, options, message):
    unet = tiny_unet("sd15")
    with pytest.raises(InvalidArgumentError, match=message):
        linfuse.linearize(unet, method=name, **options)
    assert not linearized_layers(unet)


def test_hybrid_over_a_variant_keeps_softmax_in_the_chosen_layers():
    unet = tiny_unet("sd15")
    keep = ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    report = linfuse.linearize(unet, method="hybrid", base="slab", softmax_layers=keep)
    assert report.layers_replaced == 15 and keep[0] not in report.layers
    assert report.method == "hybrid (slab)"
