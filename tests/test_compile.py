"""torch.compile(fullgraph=True) runs through linfuse's kernels: linearized UNets and CLEAR on FLUX compile into one
graph (no graph break), the compiled model equals eager and so do its gradients, with the Triton backend (the kernels
as custom ops; Triton's interpreter on this CPU) and with the PyTorch reference.

Compile time is the cost of these tests: the UNets are the tiny SD-1.5 and SDXL configs of tiny_models with one
layer per block (every block type and both attention layouts, fewer layers to trace). Most cases compile with
"aot_eager" (dynamo's one graph, the custom ops' shape functions and AOTAutograd's forward and backward: everything
but inductor's code generation, which costs minutes per UNet on two cores); inductor compiles one converted layer.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from tiny_dits import dit_inputs, tiny_flux
from tiny_models import UNET_CONFIGS, unet_inputs

import linfuse
from linfuse.linearize.convert import linearized_layers

LINEAR_ENV, LOCAL_ENV = "LINFUSE_LINEAR_ATTENTION_BACKEND", "LINFUSE_LOCAL_ATTENTION_BACKEND"
METHODS = ("linfusion", "sana", "slab")
STANDIN_SCRIPT = Path(__file__).parent / "scripts" / "standin_compile.py"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles new modules with the same code objects: start each without dynamo's caches."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class GraphRecorder:
    """An "aot_eager" backend that keeps every graph dynamo hands it: more than one means a graph break."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def op_calls(self, name: str) -> int:
        return sum(node.op == "call_function" and str(node.target).startswith(f"linfuse.{name}.")
                   for gm in self.graphs for node in gm.graph.nodes)


def compile_unet(kind: str) -> UNet2DConditionModel:
    """A tiny UNet whose self-attention layers take linfusion, sana and slab in turn: one compile covers all three.
    Each method converts its own copy (same seed); the base copy then takes the processors layer by layer, reading its
    own token grid (as linearize.twin shares one)."""
    config = dict(UNET_CONFIGS[kind], layers_per_block=1)
    if kind == "sdxl":
        config["transformer_layers_per_block"] = (1, 1, 1)
    copies = []
    for method in METHODS:
        torch.manual_seed(0)
        copies.append(UNet2DConditionModel(**config))
        linfuse.linearize(copies[-1], method=method)
    unet, converted = copies[0], [dict(linearized_layers(copy)) for copy in copies]
    grid = next(iter(converted[0].values())).processor.__dict__["_token_grid"]
    for index, (name, attn) in enumerate(linearized_layers(unet)):
        processor = converted[index % len(METHODS)][name].processor
        processor.__dict__["_token_grid"] = grid
        attn.set_processor(processor)
    for name, param in unet.named_parameters():  # trained mixers: the zero-initialised ones would hide their grads
        if "to_q_" in name or "to_k_" in name:
            param.data.normal_(0, 0.05)
    return unet


def distill_step(model, inputs: dict, target: torch.Tensor, unet: UNet2DConditionModel):
    """One distillation step's forward and backward: (output, gradient of every parameter of ``unet``)."""
    unet.zero_grad(set_to_none=True)
    out = model(**inputs).sample
    F.mse_loss(out, target).backward()
    return out.detach(), {name: p.grad.clone() for name, p in unet.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, expected: dict):
    assert got.keys() == expected.keys() and len(got) > 50
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item() + 1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("kind", "backend"), [("sd15", "triton"), ("sdxl", "triton"), ("sd15", "reference")])
def test_compiled_unet_step_equals_eager_in_one_graph(kind, backend, monkeypatch):
    """Both block structures through the Triton op; the reference path (what inductor fuses on a CPU) on one."""
    monkeypatch.setenv(LINEAR_ENV, backend)
    unet = compile_unet(kind)
    methods = {type(attn.processor).__name__ for _, attn in linearized_layers(unet)}
    assert methods == {"LinFusionAttnProcessor", "SanaAttnProcessor", "SlabAttnProcessor"}
    inputs = unet_inputs(unet, batch=1)
    target = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(3))
    expected, expected_grads = distill_step(unet, inputs, target, unet)
    recorder = GraphRecorder()
    out, grads = distill_step(torch.compile(unet, fullgraph=True, backend=recorder), inputs, target, unet)
    assert len(recorder.graphs) == 1
    layers = len(linearized_layers(unet))
    assert recorder.op_calls("linear_attention") == (layers if backend == "triton" else 0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert_grads_close(grads, expected_grads)


def test_inductor_compiles_a_converted_layer_through_the_triton_op(monkeypatch):
    """Inductor's code generation around the op (a converted self-attention layer, one graph: inductor on a whole
    UNet costs minutes of CPU; the UNet graphs above are inductor's input all the same)."""
    monkeypatch.setenv(LINEAR_ENV, "triton")
    unet = compile_unet("sd15").eval()
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert type(attn.processor).__name__ == "LinFusionAttnProcessor"
    hidden = torch.randn(2, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = attn(hidden)
        explanation = torch._dynamo.explain(attn)(hidden)
        torch._dynamo.reset()
        out = torch.compile(attn, fullgraph=True)(hidden)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert sum(str(node.target).startswith("linfuse.linear_attention.") for graph in explanation.graphs
               for node in graph.graph.nodes) == 1
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", [0, 2])
def test_compiled_clear_flux_equals_eager_in_one_graph(pool, monkeypatch):
    monkeypatch.setenv(LOCAL_ENV, "triton")
    model = tiny_flux()
    linfuse.linearize(model, method="clear", radius=2, pool=pool)
    inputs = dit_inputs("flux", model, batch=1)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
        recorder = GraphRecorder()
        out = torch.compile(model, fullgraph=True, backend=recorder)(**inputs, return_dict=False)[0]
    assert len(recorder.graphs) == 1
    assert recorder.op_calls("local_attention") == len(linearized_layers(model))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_compiling_for_a_stand_in_target_traces_through_the_shape_functions():
    """Under the stand-in sm_90 driver, meta tensors stand for GPU tensors: the trace runs only the ops' shape
    functions (nothing is compiled for the target while tracing); running the compiled graph compiles the kernels
    the launchers choose, as a launch on the GPU would. Real JIT kernels are needed: a subprocess without the
    interpreter, as in test_kernels_compile."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, str(STANDIN_SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["graphs"] == 1 and result["compiled_while_tracing"] == 0
    assert result["kernels"] == ["_state_kernel", "_output_kernel", "_kernel"]
    assert result["arches"] == [90] and all(shared > 0 for shared in result["shared"])
    assert result["outputs"] == [[[2, 256, 8, 64], "torch.float16", "meta"], [[1, 68, 4, 64], "torch.bfloat16", "meta"]]


def test_the_offload_rung_of_a_dit_compiles_into_one_graph_with_its_pre_hook(monkeypatch):
    """The DiT's last CUDA rung (lean, text encoders and VAE offloaded) adds a forward pre-hook to the transformer;
    a fullgraph compile traces it with the model (on this CPU it has nothing to move)."""
    from tiny_dit_pipelines import build_pipeline

    from linfuse.pipelines.lean.dit import DiTLeanSettings, dit_lean_mode
    from linfuse.pipelines.offload import component_offload

    monkeypatch.setenv(LOCAL_ENV, "triton")
    pipe = build_pipeline("flux")
    model = pipe.transformer
    linfuse.linearize(model, method="clear", radius=2)
    inputs = dit_inputs("flux", model, batch=1)
    settings = DiTLeanSettings(offload=True)
    before = len(model._forward_pre_hooks)
    with torch.no_grad(), component_offload(pipe, device=torch.device("cpu")), dit_lean_mode(model, settings):
        assert len(model._forward_pre_hooks) == before + 1  # the offload's send-back
        expected = model(**inputs, return_dict=False)[0]
        recorder = GraphRecorder()
        out = torch.compile(model, fullgraph=True, backend=recorder)(**inputs, return_dict=False)[0]
    assert len(recorder.graphs) == 1
    assert recorder.op_calls("local_attention") == len(linearized_layers(model))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
