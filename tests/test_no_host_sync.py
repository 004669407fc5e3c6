"""Forwards that torch.compile takes whole and that never read a tensor's values on the host.

A host read (``.item()``, ``int(t)``, ``torch.equal``) stalls a GPU stream, breaks CUDA graphs and splits a compiled
graph. On this CPU machine the detector is a dispatch mode that fails on the ops every such read goes through, and
the proof of a whole graph is ``torch._dynamo.explain`` with no break plus ``fullgraph=True`` succeeding.
"""

import pytest
import torch
from largest_output import LargestOutput
from tiny_dits import TINY_DITS, dit_inputs, flux_ids
from tiny_models import tiny_unet, unet_inputs
from torch.utils._python_dispatch import TorchDispatchMode

import linfuse
from linfuse.errors import InvalidArgumentError
from linfuse.linearize.grid import set_image_grid
from linfuse.pipelines.lean import LeanSettings, lean_mode
from linfuse.pipelines.patch_parallel import check_one_device

HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::equal", "aten::is_nonzero"}

DIT_CASES = {  # (tiny DiT, method, options, latent height and width: FLUX's in tokens, the others' in pixels)
    "flux-clear": ("flux", "clear", {"radius": 2}, (6, 4)),
    "flux-clear-pooled": ("flux", "clear", {"radius": 2, "pool": 2}, (6, 4)),
    "sd3-clear": ("sd3", "clear", {"radius": 2}, (12, 8)),
    "pixart-clear": ("pixart", "clear", {"radius": 2}, (12, 8)),
    "dit-lit": ("dit", "lit", {}, (12, 8)),
}


class HostReads(TorchDispatchMode):
    """Records every op that hands a tensor's value to Python (what a host sync is made of)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().split(".")[0] in HOST_READS:
            self.reads.append(func.name())
        return func(*args, **(kwargs or {}))


def float32_sizes() -> LargestOutput:
    """The largest float32 tensor any op returns."""
    return LargestOutput(lambda func, tensor: tensor.dtype == torch.float32)


def converted_dit(case: str):
    kind, method, options, (height, width) = DIT_CASES[case]
    model = TINY_DITS[kind]()
    linfuse.linearize(model, method=method, **options)
    with torch.no_grad():  # non-zero pooling weights and local convolutions, so that every branch counts
        generator = torch.Generator().manual_seed(5)
        for name, parameter in model.named_parameters():
            if ".processor." in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model, dit_inputs(kind, model, height=height, width=width)


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def test_the_detector_sees_a_host_read():
    with HostReads() as mode:
        int(torch.ones(3).sum())
        torch.equal(torch.ones(2), torch.ones(2))
    assert mode.reads == ["aten::_local_scalar_dense", "aten::equal"]


@pytest.mark.parametrize("case", list(DIT_CASES))
def test_dit_forwards_compile_whole_and_equal_eager(case):
    model, inputs = converted_dit(case)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**inputs, return_dict=False)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = forward(compiled, inputs)  # compiled first: nothing was read eagerly before the trace
    expected = forward(model, inputs)
    assert out.shape == expected.shape and (out - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("case", list(DIT_CASES))
def test_dit_forwards_read_nothing_on_the_host(case):
    model, inputs = converted_dit(case)
    if case.startswith("flux"):
        set_image_grid(model, *DIT_CASES[case][3])  # declared: not even the first call reads img_ids
    forward(model, inputs)
    with HostReads() as mode:
        forward(model, inputs)
    assert mode.reads == []


def test_flux_reads_its_ids_once_per_image_not_per_step():
    model, inputs = converted_dit("flux-clear")
    with HostReads() as first:
        expected = forward(model, inputs)
    with HostReads() as later:
        out = forward(model, inputs)  # a sampler's next step: the same img_ids tensor
    assert first.reads and later.reads == [] and torch.equal(out, expected)


def test_compiled_flux_grid_is_a_checked_constant_and_a_declared_grid_recompiles():
    """6×4 and 4×6 have the same token count: the compiled graph of one must not run silently on the other."""
    model, inputs = converted_dit("flux-clear")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert (forward(compiled, inputs) - forward(model, inputs)).abs().max().item() < 1e-4
    turned = {**inputs, "img_ids": flux_ids(4, 6)}
    with pytest.raises(RuntimeError, match="do not lie on the 6×4 token grid"):
        forward(compiled, turned)
    set_image_grid(model, 4, 6)
    out = forward(compiled, turned)
    set_image_grid(model, None)
    expected = forward(model, turned)
    assert (out - expected).abs().max().item() < 1e-4
    assert (expected - forward(model, inputs)).abs().max().item() > 1e-3  # the grids do differ
    with pytest.raises(InvalidArgumentError, match="height and width must be integers"):
        set_image_grid(model, 4, 0)


def test_one_inductor_compile_of_a_clear_flux_equals_eager():
    """Inductor (C++ kernels on CPU) also takes the grid check (``_assert_async``) and the pooled windows."""
    model, inputs = converted_dit("flux-clear-pooled")
    torch._dynamo.reset()
    out = forward(torch.compile(model, fullgraph=True), inputs)
    assert (out - forward(model, inputs)).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["linfusion", "slab"])
def test_lean_unet_reads_nothing_on_the_host(method):
    unet = tiny_unet("sd15")
    linfuse.linearize(unet, method=method)
    inputs = unet_inputs(unet, batch=2, height=20, width=36)  # 20 = 8·2 + 4: up-sampling to the skips' size
    with torch.no_grad(), lean_mode(unet, LeanSettings(band_elements=700, chunk_elements=900,
                                                       fuse_upsampling=True)):
        with HostReads() as mode:
            unet(**inputs)
    assert mode.reads == []


def test_mixed_devices_are_refused_before_work_starts():
    unet = tiny_unet("sd15")
    inputs = unet_inputs(unet, batch=1, height=8, width=8)
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"].to("meta")
    with torch.no_grad(), lean_mode(unet, LeanSettings()), pytest.raises(InvalidArgumentError, match="one device"):
        unet(**inputs)
    with pytest.raises(InvalidArgumentError, match=r"one device; got \['cpu', 'meta'\]"):
        check_one_device(torch.zeros(2), None, torch.zeros(2, device="meta"))  # patch parallel's check
    check_one_device(torch.zeros(2), torch.zeros(1), expected=torch.device("cpu"))


def test_half_precision_lean_unet_holds_no_float32_tensor_larger_than_a_chunk():
    """bf16 on CPU stands for fp16/bf16 on a GPU: attention state and norms stay fp32, but chunk by chunk."""
    unet = tiny_unet("sd15")
    linfuse.linearize(unet, method="slab")
    unet.to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in unet_inputs(unet, batch=1, height=32, width=32).items()}
    settings = LeanSettings(band_elements=2048, chunk_elements=2048)
    finest = unet.config.block_out_channels[0] * 32 * 32
    with torch.no_grad():
        with float32_sizes() as plain:
            unet(**inputs)
        with lean_mode(unet, settings), float32_sizes() as lean:
            out = unet(**inputs).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert plain.largest >= finest  # the plain forward upcasts whole activations (GroupNorm, attention)
    # one band of a 3×3 convolution's input, normalised in fp32: a one-row band plus its two rows of halo
    assert lean.largest <= 3 * settings.band_elements < finest, lean.largest
