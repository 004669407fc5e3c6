"""``linfuse train-teacher`` on a tiny architecture: both stages, resume, and a pipeline folder diffusers loads."""

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from linfuse.cli import main
from linfuse.distill.trainer import read_log
from linfuse.errors import InvalidArgumentError
from linfuse.linearize.layers import self_attention_layers

TINY = {"data": {"resolution": 32}, "architecture": {"vae_channels": [16, 32], "unet_channels": [32, 64],
                                                      "attention_heads": 4, "text_width": 32, "text_layers": 1,
                                                      "text_heads": 2},
        "vae": {"steps": 3, "batch_size": 4, "checkpoint_every": 2},
        "unet": {"steps": 3, "batch_size": 4, "checkpoint_every": 2}}


def write(tmp_path, **changes):
    config = {**TINY, "output_dir": str(tmp_path / "run"), "export": str(tmp_path / "teacher"), **changes}
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_teacher_exports_a_loadable_pipeline_and_resumes(tmp_path, capsys):
    config = write(tmp_path)
    assert main(["train-teacher", str(config)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "teacher", dtype=torch.float32)
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16
    assert 0.1 < pipe.vae.config.scaling_factor < 100 and pipe.vae.config.scaling_factor != 0.18215
    first = dict(self_attention_layers(pipe.unet))["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    assert first.to_q.in_features == 32  # self-attention at the latent resolution (the first block)
    weights = load_file(tmp_path / "teacher" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    image = pipe("red apple on a blue background", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert [r["step"] for r in read_log(tmp_path / "run" / "unet-train" / "loss_log.jsonl")] == [1, 2, 3]
    capsys.readouterr()

    changed = write(tmp_path, unet={**TINY["unet"], "steps": 4})  # a longer run continues from step 3
    assert main(["train-teacher", str(changed)]) == 0
    out = capsys.readouterr().out
    assert "resuming teacher UNet from" in out and "teacher VAE" not in out  # the finished VAE stage is skipped
    assert [r["step"] for r in read_log(tmp_path / "run" / "unet-train" / "loss_log.jsonl")] == [1, 2, 3, 4]


@pytest.mark.parametrize("change, message", [
    ({"data": {"resolution": 36}}, "multiple of 8"), ({"caption_dropout": 1.5}, r"caption_dropout must be in \[0, 1\)"),
    ({"unet": {"steps": 0}}, "unet.steps must be an integer >= 1"), ({"vea": {}}, "unknown key"),
    ({"data": {"resolution": 40}, "architecture": {**TINY["architecture"], "vae_channels": [16, 32, 32, 32]}},
     "must be a multiple of 16")])
def test_bad_teacher_configs_are_refused_before_training(tmp_path, change, message):
    from linfuse.distill.teacher import load_teacher_config

    with pytest.raises(InvalidArgumentError, match=message):
        load_teacher_config(write(tmp_path, **change))
    assert not (tmp_path / "run").exists()
