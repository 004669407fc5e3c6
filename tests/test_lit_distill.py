"""LiT distillation of a class-conditional DiT (noise + variance KD) and sana/hybrid distillation of a UNet."""

import math

import pytest
import torch
import yaml
from diffusers import DDPMScheduler, DiTPipeline, DiTTransformer2DModel
from safetensors.torch import load_file
from test_distill import write_config
from tiny_models import tiny_vae

from linfuse.distill.lit import lit_loss
from linfuse.distill.recipe import distill, load_distill_config
from linfuse.distill.trainer import read_log
from linfuse.linearize import read_linear_weights


def test_lit_loss_weights_noise_kd_and_variance_kd():
    noise = torch.zeros(1, 2, 1, 1)
    teacher = torch.tensor([1.0, 1.0, 2.0, 2.0]).view(1, 4, 1, 1)
    student = torch.tensor([3.0, 3.0, 0.0, 0.0]).view(1, 4, 1, 1)  # ε̂ₛ = 3, Σ̂ₛ = 0
    terms = lit_loss(student, teacher, noise, kd_weight=0.5, variance_weight=0.1)
    assert terms["task"].item() == 9.0 and terms["kd"].item() == 4.0 and terms["variance"].item() == 4.0
    assert terms["loss"].item() == pytest.approx(9.0 + 0.5 * 4.0 + 0.1 * 4.0)
    assert lit_loss(student, teacher, noise, kd_weight=0.5, variance_weight=0.1, task_only=True)["loss"].item() == 9


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A tiny class-conditional DiT over the 144 emoji classes with learned variance (8 output channels)."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=144)
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDPMScheduler(),
                       id2label={i: f"class {i}" for i in range(144)})
    path = tmp_path_factory.mktemp("dit") / "tiny-dit"
    pipe.save_pretrained(path)
    return path


def test_lit_distillation_trains_the_new_attention_against_the_dit(dit_dir, tmp_path):
    config = yaml.safe_dump({"model": str(dit_dir), "output_dir": str(tmp_path / "run"), "method": "lit",
                             "options": {"heads": 2}, "data": {"resolution": 32}, "kd_weight": 0.5,
                             "variance_weight": 0.1, "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 3,
                                                                "learning_rate": 1e-3, "seed": 1}})
    (tmp_path / "c.yaml").write_text(config)
    out = distill(load_distill_config(tmp_path / "c.yaml"))
    log = read_log(tmp_path / "run" / "loss_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(math.isclose(r["loss"], r["task"] + 0.5 * r["kd"] + 0.1 * r["variance"], rel_tol=1e-5) for r in log)
    assert all(r["variance"] > 0 for r in log)
    weights = read_linear_weights(out)
    assert weights.method == "lit" and [layer.heads for layer in weights.layers] == [2, 2]
    teacher = load_file(dit_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    # attention re-initialised (LiT's weight inheritance), so none of q/k/v/out equals the teacher's
    assert all(not torch.equal(v, teacher[k]) for k, v in weights.tensors.items()
               if ".processor." not in k and k.endswith("weight"))


def test_hybrid_distillation_keeps_the_widest_layers_softmax(teacher_dir, tmp_path):
    config = load_distill_config(write_config(
        tmp_path / "c.yaml", teacher_dir, tmp_path / "run", method="hybrid",
        options={"base": "linfusion", "softmax_layers": 4}, train={"steps": 2, "checkpoint_every": 2}))
    weights = read_linear_weights(distill(config))
    kept = weights.extra["softmax_layers"]
    assert len(weights.layers) == 12 and len(kept) == 4
    assert all(layer.dim == 32 for layer in weights.layers if layer.name.startswith("down_blocks.0"))
    assert kept == ["up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
                    "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
                    "mid_block.attentions.0.transformer_blocks.0.attn1"]  # width 64, the later ones first
