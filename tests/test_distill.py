"""Distillation: the LinFusion loss, checkpoints, resume after a kill, the NaN guard, teacher samples, SDXL."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from distill_runs import assert_resumes_exactly
from distill_runs import write_config as write_yaml
from safetensors.torch import load_file
from tiny_models import tiny_sdxl_pipeline

from linfuse.distill.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from linfuse.distill.losses import linfusion_loss
from linfuse.distill.recipe import distill, load_distill_config
from linfuse.distill.trainer import TrainingDivergedError, read_log
from linfuse.linearize import read_linear_weights


def write_config(path, teacher, out, **overrides):
    config = {"model": str(teacher), "output_dir": str(out), "data": {"resolution": 64},
              "train": {"steps": 6, "batch_size": 2, "checkpoint_every": 2, "learning_rate": 1e-3, "seed": 5}}
    return write_yaml(path, config, overrides)


def test_loss_is_task_plus_half_kd_plus_half_feat():
    student, teacher, target = torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)
    feats_s, feats_t = [torch.zeros(4), torch.zeros(4)], [torch.ones(4), torch.full((4,), 3.0)]
    losses = linfusion_loss(student, teacher, target, feats_s, feats_t, kd_weight=0.5, feat_weight=0.5)
    assert losses["task"] == 4.0 and losses["kd"] == 1.0 and losses["feat"] == 5.0  # feat: mean of 1 and 9
    assert losses["loss"] == 4.0 + 0.5 + 2.5
    assert linfusion_loss(student, teacher, target, feats_s, feats_t, kd_weight=0.5, feat_weight=0.5,
                          task_only=True)["loss"] == 4.0


def test_checkpoint_round_trip_is_exact_and_old_ones_are_pruned(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"m": module}, optimizer, {}, keep=2)
    (tmp_path / ".step-000004.tmp").mkdir()  # a write that died half-way is not a checkpoint
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002", "step-000003"]
    expected_rng = torch.rand(3)
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    state = load_checkpoint(tmp_path / "step-000003", {"m": fresh}, fresh_optimizer)
    assert state["step"] == 3 and torch.equal(torch.rand(3), expected_rng)  # RNG restored to the save point
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    for a, b in zip(optimizer.state.values(), fresh_optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert fresh_optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("train_projections", [None, False])
def test_distill_trains_the_linear_attention_layers(teacher_dir, tmp_path, train_projections):
    """By default (LinFusion's recipe) the mixers and the converted layers' q/k/v/out train; with
    train_projections: false only the mixers do."""
    extra = {} if train_projections is None else {"train_projections": train_projections}
    config = load_distill_config(write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", warmup_steps=2,
                                              train={"steps": 4, "checkpoint_every": 4}, **extra))
    out = distill(config)
    log = read_log(tmp_path / "run" / "loss_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(r["loss"] == r["task"] for r in log[:2])  # warm-up: task loss only
    assert all(math.isclose(r["loss"], r["task"] + 0.5 * r["kd"] + 0.5 * r["feat"], rel_tol=1e-5) for r in log[2:])
    assert all(r["kd"] > 0 and r["feat"] > 0 for r in log)
    weights = read_linear_weights(out)
    assert len(weights.layers) == 16
    teacher = load_file(teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
    mixers = [v for k, v in weights.tensors.items() if ".processor." in k and k.endswith("3.weight")]
    assert any(m.abs().max() > 0 for m in mixers)  # zero-initialised output layers of the mixers moved
    projections = [k for k in weights.tensors if ".processor." not in k]
    assert {k.split(".attn1.")[1] for k in projections} == {
        "to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}
    moved = [k for k in projections if not torch.equal(weights.tensors[k], teacher[k])]
    if train_projections is False:
        assert moved == []  # q/k/v/out are the teacher's: only processor parameters train
    else:
        assert sorted(moved) == sorted(projections)  # every converted layer's q/k/v/out trained


def test_killed_run_resumes_and_matches_an_uninterrupted_run(teacher_dir, tmp_path):
    steps = {"train": {"steps": 10, "checkpoint_every": 3}}
    whole = load_distill_config(write_config(tmp_path / "whole.yaml", teacher_dir, tmp_path / "whole", **steps))
    distill(whole)
    reference = read_log(tmp_path / "whole" / "loss_log.jsonl")

    cfg = write_config(tmp_path / "killed.yaml", teacher_dir, tmp_path / "killed", **steps)
    assert_resumes_exactly(cfg, tmp_path / "killed" / "loss_log.jsonl", reference)
    assert [r["step"] for r in reference] == list(range(1, 11))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(teacher_dir, tmp_path):
    config = load_distill_config(write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", warmup_steps=2,
                                              kd_weight=float("inf")))
    with pytest.raises(TrainingDivergedError, match=r"not finite at step 3 .*last good checkpoint is .*step-000002"):
        distill(config)
    assert [p.name for p in checkpoint_dirs(tmp_path / "run" / "checkpoints")] == ["step-000002"]


def test_teacher_samples_are_cached_and_reused(teacher_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na dog\n")
    data = {"source": "teacher_samples", "prompts": str(prompts), "num_samples": 20, "sample_steps": 2}
    cfg = write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", data=data, train={"steps": 1})
    distill(load_distill_config(cfg))
    shards = sorted((tmp_path / "run" / "teacher_samples").glob("shard-*.safetensors"))
    assert len(shards) == 2
    stamps = [p.stat().st_mtime_ns for p in shards]
    latents = load_file(shards[0])["latents"]
    assert latents.shape == (16, 4, 8, 8)
    distill(load_distill_config(write_config(tmp_path / "c2.yaml", teacher_dir, tmp_path / "run", data=data,
                                             train={"steps": 2})))
    assert [p.stat().st_mtime_ns for p in shards] == stamps


def test_sdxl_distills_with_its_added_conditions(tmp_path):
    path = tmp_path / "tiny-sdxl"
    tiny_sdxl_pipeline().save_pretrained(path)
    cfg = write_config(tmp_path / "c.yaml", path, tmp_path / "run", train={"steps": 1}, data={"resolution": 32})
    out = distill(load_distill_config(cfg))
    assert len(read_linear_weights(out).layers) == 70
    assert json.loads((out / "linear_attention.json").read_text())["method"] == "linfusion"


def test_two_processes_with_torchrun_share_one_run(teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", train={"steps": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "linfuse", "distill", str(cfg)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es)" in result.stdout and "effective batch 4" in result.stdout
    assert [r["step"] for r in read_log(tmp_path / "run" / "loss_log.jsonl")] == [1, 2]  # one log, not two
    assert len(read_linear_weights(tmp_path / "run" / "linear_attention").layers) == 16


def test_bf16_mixed_precision_runs_on_cpu(teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run",
                       train={"steps": 1, "mixed_precision": "bf16"})
    distill(load_distill_config(cfg))
    record = read_log(tmp_path / "run" / "loss_log.jsonl")[0]
    assert math.isfinite(record["loss"]) and record["kd"] > 0


def test_lora_distillation_trains_adapters_and_exports_a_diffusers_lora(teacher_dir, tmp_path):
    """lora_rank: the projections stay the teacher's, rank-4 adapters train with the mixers, and the exported
    LoRA loads with pipe.load_lora_weights into the linearized teacher: the student = linear weights + LoRA."""
    import linfuse
    from linfuse.pipelines.loading import _from_pretrained

    config = load_distill_config(write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", lora_rank=4,
                                              export=str(tmp_path / "student"),
                                              train={"steps": 4, "checkpoint_every": 4, "learning_rate": 1e-2}))
    out = distill(config)
    weights = read_linear_weights(out)
    teacher = load_file(teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
    projections = [k for k in weights.tensors if ".processor." not in k]
    assert projections and all(torch.equal(weights.tensors[k], teacher[k]) for k in projections)
    lora = load_file(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors")
    assert len(lora) == 16 * 4 * 2  # 16 layers × (q, k, v, out) × (down, up)
    assert all(k.startswith("unet.") and ".attn1." in k for k in lora)
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora.up" in k or "lora_B" in k)  # B left zero: moved
    assert (tmp_path / "student" / "lora" / "pytorch_lora_weights.safetensors").exists()

    pipe = _from_pretrained(str(teacher_dir), torch.float32)
    linfuse.linearize(pipe, weights=out)
    from tiny_models import unet_inputs

    inputs = unet_inputs(pipe.unet, batch=1)
    with torch.no_grad():
        without = pipe.unet(**inputs).sample
        pipe.load_lora_weights(tmp_path / "run" / "lora")
        with_lora = pipe.unet(**inputs).sample
    assert (with_lora - without).abs().max() > 0


def test_lora_rank_with_train_projections_is_refused(teacher_dir, tmp_path):
    from linfuse.errors import InvalidArgumentError

    path = write_config(tmp_path / "c.yaml", teacher_dir, tmp_path / "run", lora_rank=4, train_projections=True)
    with pytest.raises(InvalidArgumentError, match="lora_rank > 0 trains LoRA adapters instead of the projections"):
        load_distill_config(path)
    path = write_config(tmp_path / "d.yaml", teacher_dir, tmp_path / "run", lora_rank=-1)
    with pytest.raises(InvalidArgumentError, match="lora_rank must be an integer >= 0"):
        load_distill_config(path)
