"""CLEAR's distillation on a tiny FLUX pipeline: what trains, the loss terms, the export, resume after a kill."""


import pytest
import torch
from safetensors.torch import load_file

from linfuse.distill.flow import flow_noising
from linfuse.distill.recipe import distill, load_distill_config
from linfuse.distill.trainer import read_log
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import load_pipeline
from tests.distill_runs import assert_resumes_exactly
from tests.distill_runs import write_config as write_yaml
from tests.tiny_dit_pipelines import save_pipeline


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_pipeline("flux", tmp_path_factory.mktemp("teacher") / "tiny-flux")


def write_config(path, teacher, out, **overrides):
    config = {"model": str(teacher), "output_dir": str(out), "method": "clear", "options": {"radius": 2},
              "data": {"source": "teacher_samples", "resolution": 32, "num_samples": 16, "sample_steps": 2},
              "train": {"steps": 6, "batch_size": 2, "checkpoint_every": 2, "learning_rate": 1e-3, "seed": 5}}
    return write_yaml(path, config, overrides)


def test_flow_noising_interpolates_and_targets_the_velocity():
    latents = torch.randn(3, 2, 4, 4)
    noise, sigmas, noisy, velocity = flow_noising(latents, torch.Generator().manual_seed(0))
    t = sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - t) * latents + t * noise)
    torch.testing.assert_close(velocity, noise - latents)
    assert ((sigmas > 0) & (sigmas < 1)).all()


def test_clear_distillation_trains_image_side_projections_only_and_exports_a_student(flux_dir, tmp_path):
    config = load_distill_config(write_config(tmp_path / "c.yaml", flux_dir, tmp_path / "run",
                                              export=str(tmp_path / "student")))
    out = distill(config)
    log = read_log(tmp_path / "run" / "loss_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(r["kd"] > 0 and r["feat"] > 0 and r["task"] > 0 for r in log)
    trained = load_file(out / "linear_attention.safetensors")
    teacher = load_pipeline(str(flux_dir), method=None, device="cpu", dtype="fp32").transformer.state_dict()
    assert trained and all(k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v", "0") for k in trained)
    assert not any("add_" in k for k in trained)  # the text branch stays the teacher's
    moved = [k for k, v in trained.items() if not torch.equal(v, teacher[k])]
    assert len(moved) == len(trained)
    student = load_pipeline(str(tmp_path / "student"), device="cpu", dtype="fp32")  # method auto: clear
    assert student.linfuse_report.method == "clear"
    assert (tmp_path / "student" / "linfuse.json").exists()  # the native size travels with the student
    for name in ("tokenizer", "tokenizer_2"):  # the teacher's, not the padding the run's encoding left behind
        path = f"{name}/tokenizer.json"
        assert (tmp_path / "student" / path).read_bytes() == (flux_dir / path).read_bytes()
    image = student("red apple on a blue background", num_inference_steps=2, height=32, width=32,
                    max_sequence_length=8).images[0]
    assert image.size == (32, 32)


def test_killed_clear_run_resumes_and_matches_an_uninterrupted_run(flux_dir, tmp_path):
    steps = {"train": {"steps": 10, "checkpoint_every": 3}}
    whole = load_distill_config(write_config(tmp_path / "whole.yaml", flux_dir, tmp_path / "whole", **steps))
    reference_weights = load_file(distill(whole) / "linear_attention.safetensors")
    reference = read_log(tmp_path / "whole" / "loss_log.jsonl")

    cfg = write_config(tmp_path / "killed.yaml", flux_dir, tmp_path / "killed", **steps)
    assert_resumes_exactly(cfg, tmp_path / "killed" / "loss_log.jsonl", reference)
    assert [r["step"] for r in reference] == list(range(1, 11))
    weights = load_file(tmp_path / "killed" / "linear_attention" / "linear_attention.safetensors")
    for key, value in reference_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)


def test_clear_refuses_frozen_projections(flux_dir, tmp_path):
    config = load_distill_config(write_config(tmp_path / "f.yaml", flux_dir, tmp_path / "f",
                                              train_projections=False))
    with pytest.raises(InvalidArgumentError, match="q/k/v/out"):
        distill(config)


def test_caption_dropout_trains_the_unconditional_branch(flux_dir, tmp_path, monkeypatch):
    from linfuse.distill.clear_recipe import FlowConditioning

    seen, encode = [], FlowConditioning.encode
    monkeypatch.setattr(FlowConditioning, "encode", lambda self, captions, device: seen.extend(captions)
                        or encode(self, captions, device))
    distill(load_distill_config(write_config(tmp_path / "d.yaml", flux_dir, tmp_path / "d", caption_dropout=0.5,
                                             train={"steps": 8, "batch_size": 4})))
    assert len(seen) == 32
    assert 4 <= seen.count("") <= 28 and all(c.strip() for c in seen if c)  # both branches train


def test_drop_captions_rate_and_config_range(flux_dir, tmp_path):
    from linfuse.distill.data import drop_captions

    dropped = drop_captions(["a cat"] * 4000, 0.25, torch.Generator().manual_seed(0))
    assert abs(dropped.count("") / 4000 - 0.25) < 0.03
    assert set(dropped) == {"", "a cat"}
    with pytest.raises(InvalidArgumentError, match=r"caption_dropout must be in \[0, 1\); got 1.0"):
        load_distill_config(write_config(tmp_path / "r.yaml", flux_dir, tmp_path / "r", caption_dropout=1.0))
    lit = write_config(tmp_path / "l.yaml", flux_dir, tmp_path / "l", caption_dropout=0.1, method="lit")
    lit.write_text(lit.read_text().replace("radius: 2", "heads: 1"))  # lit's own options (CLEAR's are refused)
    with pytest.raises(InvalidArgumentError, match="class-conditional"):
        load_distill_config(lit)
