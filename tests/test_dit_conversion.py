"""CLEAR local windows on FLUX / SD3 / PixArt and LiT linear attention on DiT / PixArt, with tiny models."""

import math

import pytest
import torch
from safetensors.torch import save_file
from tiny_dits import TINY_DITS, dit_inputs, run, tiny_dit, tiny_flux, tiny_pixart, tiny_sd3
from tiny_models import tiny_unet

import linfuse
from linfuse.errors import InvalidArgumentError, WeightsError
from linfuse.linearize import linearized_layers, trainable_parameters
from linfuse.linearize.clear import ClearAttnProcessor

CLEAR_LAYERS = {
    "flux": ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"],
    "sd3": ["transformer_blocks.0.attn", "transformer_blocks.0.attn2", "transformer_blocks.1.attn"],
    "pixart": ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"],
}


def grid_inputs(kind, model, height=6, width=5):
    """FLUX takes a token grid; the others a latent that the 2×2 patch embedding halves."""
    scale = 1 if kind == "flux" else 2
    return dit_inputs(kind, model, height=height * scale, width=width * scale)


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("kind", ["flux", "sd3", "pixart"])
def test_clear_converts_the_right_layers_and_a_covering_window_equals_dense_attention(kind):
    model = TINY_DITS[kind]()
    inputs = grid_inputs(kind, model)
    dense = run(model, inputs)
    report = linfuse.linearize(model, method="clear", radius=8)  # 8² > 5² + 4²: every image key is in every window
    assert report.layers == CLEAR_LAYERS[kind] == [name for name, _ in linearized_layers(model)]
    if kind == "pixart":  # cross-attention keeps its processor
        assert all(not isinstance(block.attn2.processor, ClearAttnProcessor) for block in model.transformer_blocks)
    assert (run(model, inputs) - dense).abs().max().item() < 1e-5
    other = grid_inputs(kind, model, height=4, width=7)  # another size and aspect ratio, same processors
    converted = run(model, other)
    linfuse.unlinearize(model)
    assert (converted - run(model, other)).abs().max().item() < 1e-5
    assert torch.equal(run(model, inputs), dense)


@pytest.mark.parametrize("kind", ["flux", "sd3", "pixart"])
def test_small_windows_change_the_output_and_stay_finite(kind):
    model = TINY_DITS[kind]()
    inputs = grid_inputs(kind, model)
    dense = run(model, inputs)
    linfuse.linearize(model, method="clear", radius=2, pool=2)
    out = run(model, inputs)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert (out - dense).abs().max().item() > 1e-3


def direct_clear(q, k, v, text, grid, radius, weight=None):
    """O(N²) reference: explicit visibility mask over [text; pooled; image] keys, softmax, weighted sum."""
    height, width = grid
    n_img = height * width
    ys, xs = torch.arange(n_img) // width, torch.arange(n_img) % width
    near = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2 < radius**2
    keys, values = [k[:, :text]], [v[:, :text]]
    pooled = 0
    if weight is not None:
        f = weight.shape[0]
        rows, cols = height // f, width // f
        for i in range(rows):
            for j in range(cols):
                idx = [text + (f * i + a) * width + f * j + b for a in range(f) for b in range(f)]
                w = torch.stack([weight[a, b] for a in range(f) for b in range(f)]).to(k)
                keys.append((k[:, idx] * w[None, :, None, None]).sum(1, keepdim=True))
                values.append((v[:, idx] * w[None, :, None, None]).sum(1, keepdim=True))
        pooled = rows * cols
    keys, values = torch.cat([*keys, k[:, text:]], 1), torch.cat([*values, v[:, text:]], 1)
    visible = torch.zeros(text + n_img, text + pooled + n_img, dtype=torch.bool)
    visible[:text, :text] = True
    visible[:text, text + pooled:] = True
    visible[text:, : text + pooled] = True
    visible[text:, text + pooled:] = near
    logits = torch.einsum("bqhd,bkhd->bhqk", q, keys) / math.sqrt(q.shape[-1])
    weights = logits.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, values)


@pytest.mark.parametrize("pool", [0, 2])
def test_window_attention_matches_the_direct_masked_softmax(pool):
    g = torch.Generator().manual_seed(0)
    text, grid = 3, (5, 6)
    q, k, v = (torch.randn(2, text + 30, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    processor = ClearAttnProcessor(16, 2, radius=2, pool=pool).double()
    weight = None
    if pool:
        with torch.no_grad():
            processor.spatial_weight.copy_(torch.randn(processor.spatial_weight.shape, generator=g))
        weight = processor.spatial_weight.reshape(pool, pool)
    out = processor.window_attention(q, k, v, text, grid)
    assert (out - direct_clear(q, k, v, text, grid, 2, weight)).abs().max().item() < 1e-10


def test_proportional_attention_scales_logits_by_the_log_length_ratio():
    processor = ClearAttnProcessor(16, 2, proportional_attention=True, train_tokens=4608)
    assert processor.softmax_scale(64, 4608) == pytest.approx(64**-0.5)
    assert processor.softmax_scale(64, 4608 * 4) == pytest.approx(math.sqrt(math.log(4608 * 4) / math.log(4608) / 64))


@pytest.mark.parametrize("pool", [0, 2])
def test_proportional_attention_takes_log_10n_with_pooled_tokens_as_clear_does(pool):
    """√(log(c·N) / log N_train / d) with c = 10 for CLEAR's pooled processor, c = 1 without pooling; fp64."""
    g = torch.Generator().manual_seed(1)
    text, grid, d, train = 3, (5, 6), 8, 4608
    q, k, v = (torch.randn(2, text + 30, 2, d, generator=g, dtype=torch.float64) for _ in range(3))
    processor = ClearAttnProcessor(16, 2, radius=2, pool=pool, proportional_attention=True, train_tokens=train)
    processor = processor.double()
    c = 10 if pool else 1
    scale = math.sqrt(math.log(c * (text + 30)) / math.log(train) / d)
    assert processor.softmax_scale(d, text + 30) == scale
    weight = processor.spatial_weight.reshape(pool, pool) if pool else None
    expected = direct_clear(q * (scale * math.sqrt(d)), k, v, text, grid, 2, weight)  # logits q·k · scale
    assert (processor.window_attention(q, k, v, text, grid) - expected).abs().max().item() < 1e-12


def saved_student(student, folder, method: str, **options):
    """``student`` converted by ``method`` with random new parameters, and the folder its weights were saved to."""
    linfuse.linearize(student, method=method, **options)
    for seed, (_, attn) in enumerate(linearized_layers(student)):
        randomize(attn.processor, seed)
    return linfuse.save_linear_weights(student, folder)


def test_inference_options_may_be_set_when_loading_weights(tmp_path):
    path = saved_student(tiny_flux(), tmp_path / "clear", "clear", radius=2, pool=2)
    plain, proportional = tiny_flux(), tiny_flux()
    linfuse.linearize(plain, method="clear", weights=path)
    linfuse.linearize(proportional, method="clear", weights=path, proportional_attention=True, train_tokens=16)
    layers = [attn.processor for _, attn in linearized_layers(proportional)]
    assert all(p.proportional_attention and p.train_tokens == 16 and p.radius == 2 and p.pool == 2 for p in layers)
    inputs = grid_inputs("flux", plain)
    assert (run(proportional, inputs) - run(plain, inputs)).abs().max().item() > 1e-4
    with pytest.raises(InvalidArgumentError, match=r"radius apply only without weights.*only proportional_attention"):
        linfuse.linearize(tiny_flux(), method="clear", weights=path, radius=4)


@pytest.mark.parametrize("kind", ["flux", "sd3", "pixart"])
def test_clear_save_and_load_round_trip_is_exact(kind, tmp_path):
    student = TINY_DITS[kind]()
    linfuse.linearize(student, method="clear", radius=3, pool=2)
    for seed, (_, attn) in enumerate(linearized_layers(student)):
        randomize(attn.processor, seed)
        randomize(attn.to_q, seed + 100)
    inputs = grid_inputs(kind, student)
    path = linfuse.save_linear_weights(student, tmp_path / "clear")
    fresh = TINY_DITS[kind]()
    report = linfuse.linearize(fresh, method="clear", weights=path)
    assert report.layers == CLEAR_LAYERS[kind]
    assert torch.equal(run(fresh, inputs), run(student, inputs))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), student.state_dict().values(),
                                                  strict=True))


def test_clear_published_file_for_flux_loads_unchanged(tmp_path):
    """CLEAR's files hold the transformer's own parameter names, q/k/v/out of every attention plus spatial_weight."""
    source = tiny_flux()
    linfuse.linearize(source, method="clear", radius=2, pool=2)
    for seed, (_, attn) in enumerate(linearized_layers(source)):
        randomize(attn.processor, seed)
    state = {name: p.detach().clone() for name, p in source.named_parameters()
             if any(part in name for part in (".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".attn.to_out."))
             or "spatial_weight" in name}
    assert "transformer_blocks.0.attn.processor.spatial_weight" in state
    path = tmp_path / "clear_local_2_down_2.safetensors"
    save_file(state, path)
    fresh = tiny_flux(seed=5)
    report = linfuse.linearize(fresh, method="clear", weights=path)
    processor = fresh.transformer_blocks[0].attn.processor
    assert (processor.radius, processor.pool) == (2, 2) and report.layers == CLEAR_LAYERS["flux"]
    for name, value in state.items():
        assert torch.equal(fresh.get_parameter(name), value)
    bad = tmp_path / "attention.safetensors"
    save_file(state, bad)
    with pytest.raises(WeightsError, match="clear_local_<radius>"):
        linfuse.linearize(tiny_flux(), method="clear", weights=bad)


@pytest.mark.parametrize("kind", ["dit", "pixart"])
def test_lit_inherits_every_weight_but_the_attention_and_uses_fewer_heads(kind):
    model = tiny_dit() if kind == "dit" else tiny_pixart()
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = dit_inputs(kind, model)
    teacher_out = run(model, inputs)
    report = linfuse.linearize(model, method="lit")
    layers = linearized_layers(model)
    assert [n for n, _ in layers] == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"] == report.layers
    assert all(attn.processor.heads == max(1, attn.heads // 4) for _, attn in layers)
    state = model.state_dict()
    for key, value in teacher_state.items():
        in_attention = ".attn1.to_" in key
        assert torch.equal(state[key], value) != in_attention or (in_attention and key.endswith("bias")), key
    out = run(model, inputs)
    assert out.shape == teacher_out.shape and torch.isfinite(out).all()
    linfuse.unlinearize(model)
    assert torch.equal(run(model, inputs), teacher_out)


def test_lit_heads_option_and_round_trip(tmp_path):
    student = tiny_dit()
    path = saved_student(student, tmp_path / "lit", "lit", heads=2, kernel_size=3)
    fresh = tiny_dit()  # the same pretrained DiT; the weights carry only the attention
    linfuse.linearize(fresh, method="lit", weights=path)
    processor = fresh.transformer_blocks[0].attn1.processor
    assert (processor.heads, processor.kernel_size) == (2, 3)
    inputs = dit_inputs("dit", fresh)
    assert torch.equal(run(fresh, inputs), run(student, inputs))
    with pytest.raises(InvalidArgumentError, match="heads must be a positive divisor"):
        linfuse.linearize(tiny_dit(), method="lit", heads=3)


def test_bad_calls_name_the_problem():
    with pytest.raises(InvalidArgumentError, match="method 'clear' converts FluxTransformer2DModel"):
        linfuse.linearize(tiny_unet(), method="clear")
    with pytest.raises(InvalidArgumentError, match="method 'lit' converts"):
        linfuse.linearize(tiny_flux(), method="lit")
    with pytest.raises(InvalidArgumentError, match="expected a diffusers pipeline with a UNet2DConditionModel"):
        linfuse.linearize(tiny_sd3(), method="linfusion")
    with pytest.raises(InvalidArgumentError, match="radius must be an integer >= 1"):
        linfuse.linearize(tiny_flux(), method="clear", radius=0)
    with pytest.raises(InvalidArgumentError, match="takes the options .*radius.*; got window"):
        linfuse.linearize(tiny_flux(), method="clear", window=3)
    model = tiny_pixart()
    linfuse.linearize(model, method="clear", radius=2, pool=8)
    with pytest.raises(InvalidArgumentError, match="pool=8 is larger than the 3×3 token grid"):
        run(model, dit_inputs("pixart", model, height=6, width=6))


def test_clear_trains_image_side_projections_and_pooling_weights_only():
    model = tiny_flux()
    linfuse.linearize(model, method="clear", radius=2, pool=2)
    trainable = {id(p) for p in trainable_parameters(model)}
    names = sorted(name for name, p in model.named_parameters() if id(p) in trainable)
    expected = []
    for layer in CLEAR_LAYERS["flux"]:
        projections = ["to_q", "to_k", "to_v"] + (["to_out.0"] if layer.startswith("transformer_blocks") else [])
        expected += [f"{layer}.{p}.{kind}" for p in projections for kind in ("bias", "weight")]
        expected.append(f"{layer}.processor.spatial_weight")
    assert names == sorted(expected)  # no add_q/k/v_proj, to_add_out, norms or MLPs
    assert not any("add_" in name for name in names)


def test_ntk_scaled_rope_equals_diffusers_ntk_factor_and_is_restored():
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    from linfuse.pipelines.rope import ntk_scaled_rope

    model = tiny_flux()
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(6.0), torch.arange(5.0), indexing="ij"),
                      -1).reshape(-1, 3)
    before = model.pos_embed(ids)
    with ntk_scaled_rope(model, 10):
        cos, sin = model.pos_embed(ids)
        inputs = grid_inputs("flux", model)
        scaled = run(model, inputs)
    expected = [get_1d_rotary_pos_embed(dim, ids[:, axis], theta=model.pos_embed.theta, ntk_factor=10.0,
                                        repeat_interleave_real=True, use_real=True, freqs_dtype=torch.float64)
                for axis, dim in enumerate(model.pos_embed.axes_dim)]
    assert torch.equal(cos, torch.cat([c for c, _ in expected], -1)) and torch.equal(sin, torch.cat([s for _, s in
                                                                                                       expected], -1))
    assert all(torch.equal(a, b) for a, b in zip(model.pos_embed(ids), before, strict=True))
    assert (scaled - run(model, inputs)).abs().max().item() > 1e-4
    with pytest.raises(InvalidArgumentError, match="ntk_factor must be a finite number > 0"):
        with ntk_scaled_rope(model, 0):
            pass
    with pytest.raises(InvalidArgumentError, match="has no rotary position embedding"):
        with ntk_scaled_rope(tiny_sd3(), 10):
            pass
