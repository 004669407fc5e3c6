"""Saving and loading linear-attention weights: linfuse's format and LinFusion's published layout."""

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_unet, unet_inputs

import linfuse
from linfuse.errors import ArchitectureMismatchError, WeightsError
from linfuse.linearize import self_attention_layers


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter a random value so that round trips cannot pass by accident (zero-init mixers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def trained_student(kind="sd15", seed=7):
    """A linearized UNet whose mixers and self-attention projections differ from the teacher's."""
    unet = tiny_unet(kind)
    linfuse.linearize(unet)
    for _, attn in self_attention_layers(unet):
        for module in (attn.processor, attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            randomize(module, seed)
            seed += 1
    return unet


def forward(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def test_save_then_load_into_a_fresh_model_is_bitwise_equal(tmp_path):
    student = trained_student()
    inputs = unet_inputs(student)
    path = linfuse.save_linear_weights(student, tmp_path / "w")
    config = json.loads((path / "linear_attention.json").read_text())
    assert config["method"] == "linfusion" and config["base_model_class"] == "UNet2DConditionModel"
    assert [layer["name"] for layer in config["layers"]] == [n for n, _ in self_attention_layers(student)]
    assert not list(path.glob("*.tmp"))  # atomic writes leave no temporary files

    fresh = tiny_unet("sd15")
    report = linfuse.linearize(fresh, weights=path)
    assert report.layers_replaced == 16 and report.weights == str(path)
    assert torch.equal(forward(fresh, inputs), forward(student, inputs))
    student_state, fresh_state = student.state_dict(), fresh.state_dict()
    assert student_state.keys() == fresh_state.keys()
    assert all(torch.equal(student_state[k], fresh_state[k]) for k in student_state)


def test_unlinearize_after_loading_weights_restores_the_teacher_projections(tmp_path):
    path = linfuse.save_linear_weights(trained_student(), tmp_path / "w")
    unet = tiny_unet("sd15")
    inputs = unet_inputs(unet)
    teacher = forward(unet, inputs)
    linfuse.linearize(unet, weights=path)
    linfuse.unlinearize(unet)
    assert torch.equal(forward(unet, inputs), teacher)


def write_linfusion_layout(unet, directory):
    """Export like LinFusion's ModelMixin: config.json with modules_list and children "0", "1", … ."""
    directory.mkdir()
    modules, tensors = [], {}
    for i, (name, attn) in enumerate(self_attention_layers(unet)):
        modules.append({"module_name": name, "dim_n": attn.to_q.out_features, "heads": attn.heads,
                        "projection_mid_dim": None})
        for mixer in ("to_q_", "to_k_"):
            seq = getattr(attn.processor, mixer)
            for j in (0, 1, 3):  # Linear, LayerNorm, (LeakyReLU has no weights), Linear
                tensors[f"{i}.{mixer}.{j}.weight"] = seq[j].weight.detach().clone()
                tensors[f"{i}.{mixer}.{j}.bias"] = seq[j].bias.detach().clone()
        for proj in ("to_q", "to_k", "to_v"):
            tensors[f"{i}.{proj}.weight"] = getattr(attn, proj).weight.detach().clone()
        tensors[f"{i}.to_out.0.weight"] = attn.to_out[0].weight.detach().clone()
        tensors[f"{i}.to_out.0.bias"] = attn.to_out[0].bias.detach().clone()
    config = {"_class_name": "LinFusion", "_diffusers_version": "0.30.0", "modules_list": modules}
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "diffusion_pytorch_model.safetensors"))
    return directory


def test_linfusion_published_layout_gives_the_outputs_of_its_weights(tmp_path):
    student = trained_student()
    inputs = unet_inputs(student)
    directory = write_linfusion_layout(student, tmp_path / "LinFusion-1-5")
    fresh = tiny_unet("sd15")
    linfuse.linearize(fresh, weights=directory)
    assert torch.equal(forward(fresh, inputs), forward(student, inputs))


def test_linfusion_layer_math_matches_the_published_module(tmp_path):
    """One layer computed by hand from the raw checkpoint tensors: q = W_q(x + MLP_q(x)), k likewise, v = W_v x."""
    student = trained_student()
    directory = write_linfusion_layout(student, tmp_path / "ckpt")
    fresh = tiny_unet("sd15")
    linfuse.linearize(fresh, weights=directory)
    from safetensors.torch import load_file

    t = {k: v.double() for k, v in load_file(directory / "diffusion_pytorch_model.safetensors").items()}
    _, attn = self_attention_layers(fresh)[0]
    x = torch.randn(1, 10, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def mlp(prefix, h):
        h = h @ t[f"0.{prefix}.0.weight"].T + t[f"0.{prefix}.0.bias"]
        h = torch.nn.functional.layer_norm(h, h.shape[-1:], t[f"0.{prefix}.1.weight"], t[f"0.{prefix}.1.bias"])
        h = torch.nn.functional.leaky_relu(h, 0.01)
        return h @ t[f"0.{prefix}.3.weight"].T + t[f"0.{prefix}.3.bias"]

    def heads(h):
        return h.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

    q = heads((x + mlp("to_q_", x)) @ t["0.to_q.weight"].T)
    k = heads((x + mlp("to_k_", x)) @ t["0.to_k.weight"].T)
    v = heads(x @ t["0.to_v.weight"].T)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    z = q @ k.mean(-2, keepdim=True).mT + 1e-4
    o = (q @ (k.mT @ v) / k.shape[-2] / z).transpose(1, 2).flatten(2)
    expected = o @ t["0.to_out.0.weight"].T + t["0.to_out.0.bias"]
    with torch.no_grad():
        got = attn(x.float())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_weights_for_another_architecture_are_refused_naming_both(tmp_path):
    path = linfuse.save_linear_weights(trained_student("sdxl"), tmp_path / "xl")
    unet = tiny_unet("sd15")
    expected = r"made for .*70 self-attention.* but the model .*16 self-attention"
    with pytest.raises(ArchitectureMismatchError, match=expected):
        linfuse.linearize(unet, weights=path)
    assert all(type(a.processor).__name__ == "AttnProcessor2_0" for _, a in self_attention_layers(unet))


def test_missing_corrupt_and_wrong_weights_files_raise_weights_errors(tmp_path):
    unet = tiny_unet("sd15")
    with pytest.raises(WeightsError, match="does not exist"):
        linfuse.linearize(unet, weights=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="holds neither linear_attention.json"):
        linfuse.linearize(unet, weights=empty)

    path = linfuse.save_linear_weights(trained_student(), tmp_path / "w")
    weights_file = path / "linear_attention.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or incomplete"):
        linfuse.linearize(unet, weights=path)
    weights_file.unlink()
    with pytest.raises(WeightsError, match="linear_attention.safetensors is missing"):
        linfuse.linearize(unet, weights=path)
    (path / "linear_attention.json").write_text("{not json")
    with pytest.raises(WeightsError, match="is not valid JSON"):
        linfuse.linearize(unet, weights=path)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(WeightsError, match="not a LinFusion checkpoint"):
        linfuse.linearize(unet, weights=other)
    assert not any(type(a.processor).__name__ != "AttnProcessor2_0" for _, a in self_attention_layers(unet))


def test_checkpoint_missing_a_tensor_is_refused_before_any_change(tmp_path):
    student = trained_student()
    directory = write_linfusion_layout(student, tmp_path / "ckpt")
    from safetensors.torch import load_file

    tensors = load_file(directory / "diffusion_pytorch_model.safetensors")
    del tensors["3.to_k_.1.weight"]
    save_file(tensors, str(directory / "diffusion_pytorch_model.safetensors"))
    unet = tiny_unet("sd15")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(WeightsError, match="1 missing tensors"):
        linfuse.linearize(unet, weights=directory)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="could not fetch weights 'Yuanshi/LinFusion-1-5'.*local directory"):
        linfuse.linearize(tiny_unet("sd15"), weights="Yuanshi/LinFusion-1-5")
