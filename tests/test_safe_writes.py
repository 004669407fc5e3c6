"""Writes never destroy what linfuse did not make: export, run and batch folders are refused unless --overwrite,
stale batch images are found by their recorded parameters, files get the umask's mode, text files must be UTF-8."""

import json
import os
import stat
from pathlib import Path

import pytest
from distill_runs import write_config

from linfuse.cli import main
from linfuse.distill.outputs import check_destinations
from linfuse.errors import InvalidArgumentError
from linfuse.fileio import MARKER, atomic_folder, atomic_write, folder_marker
from linfuse.pipelines import GenerationParams, read_png_parameters
from linfuse.pipelines.batch import read_jobs

BATCH = ["--steps", "2", "--seed", "10", "--device", "cpu"]
CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "configs"


def foreign_folder(path):
    """A folder of the user's: a text file and a sub-folder with a picture."""
    (path / "photos").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def contents(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def distill_config(path, teacher, tmp_path, **overrides):
    config = {"model": str(teacher), "output_dir": str(tmp_path / "run"), "export": str(tmp_path / "export"),
              "data": {"resolution": 64}, "train": {"steps": 1, "batch_size": 1, "checkpoint_every": 1, "seed": 5}}
    return write_config(path, config, overrides)


# ---- distill / train-teacher: export and output_dir ---------------------------------------------------------------

def test_a_refused_distill_keeps_the_users_export_folder_and_loads_nothing(tmp_path, capsys):
    """The teacher named does not exist: had distill loaded anything, the error would be about it."""
    kept = foreign_folder(tmp_path / "export")
    config = distill_config(tmp_path / "c.yaml", tmp_path / "no-such-teacher", tmp_path)
    assert main(["distill", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"linfuse: error: export {tmp_path / 'export'} exists and was not made by linfuse (no {MARKER} file); it "
        "holds notes.txt, photos/; choose a new or empty folder, or pass --overwrite to replace it (what it holds "
        "is deleted once the new folder is in place)\n")
    assert contents(tmp_path / "export") == kept
    assert not (tmp_path / "run").exists()  # refused before the run folder was made, let alone trained


def test_overwrite_replaces_the_export_and_a_rerun_may_replace_its_own(teacher_dir, tmp_path):
    foreign_folder(tmp_path / "export")
    config = distill_config(tmp_path / "c.yaml", teacher_dir, tmp_path)
    assert main(["distill", str(config), "--overwrite"]) == 0
    export = tmp_path / "export"
    assert not (export / "notes.txt").exists() and not (export / "photos").exists()
    assert (export / "model_index.json").is_file() and (export / "linear_attention" / "linear_attention.json").is_file()
    assert folder_marker(export) == {"made_by": "linfuse distill", "kind": "a pipeline", "version": "0.1.0"}
    assert folder_marker(tmp_path / "run")["kind"] == "a training run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "export", "run"]  # no .tmp / .old sibling left
    # a second run replaces linfuse's own export and writes into its own run folder without --overwrite
    check_destinations("distill", tmp_path / "run", export, overwrite=False, inputs={"model": teacher_dir})


def test_a_foreign_output_dir_is_refused_and_an_old_run_folder_is_not(tmp_path, capsys):
    kept = foreign_folder(tmp_path / "run")
    config = distill_config(tmp_path / "c.yaml", tmp_path / "no-such-teacher", tmp_path, export=None)
    assert main(["distill", str(config)]) == 2
    assert capsys.readouterr().err.startswith(
        f"linfuse: error: output_dir {tmp_path / 'run'} exists and was not made by linfuse (no {MARKER} file); it "
        "holds notes.txt, photos/; choose a new or empty folder, or pass --overwrite to write into it anyway (files "
        "of the names linfuse writes are replaced, nothing else is touched)")
    assert contents(tmp_path / "run") == kept
    # a run folder of a linfuse from before the marker holds only names linfuse writes there: it is accepted, and
    # marked as a run from then on
    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "loss_log.jsonl").write_text("")
    check_destinations("distill", old, None, overwrite=False, inputs={})
    assert folder_marker(old)["made_by"] == "linfuse distill" and (old / "loss_log.jsonl").exists()


@pytest.mark.parametrize("export, holds", [(".", "the working directory"), ("{tmp}/runs", "output_dir"),
                                           ("{tmp}/models", "model")])
def test_an_export_holding_an_input_is_refused_even_with_overwrite(tmp_path, monkeypatch, capsys, export, holds):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    config = distill_config(tmp_path / "c.yaml", tmp_path / "models" / "teacher", tmp_path / "runs",
                            export=export.format(tmp=tmp_path))
    assert main(["distill", str(config), "--overwrite"]) == 2
    assert f" holds {holds} (" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "models"]


def test_train_teacher_refuses_a_foreign_export_before_training(tmp_path, capsys):
    kept = foreign_folder(tmp_path / "teacher")
    config = tmp_path / "t.yaml"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "export": str(tmp_path / "teacher")}))
    assert main(["train-teacher", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"linfuse: error: export {tmp_path / 'teacher'} exists and was not "
                                              "made by linfuse")
    assert contents(tmp_path / "teacher") == kept and not (tmp_path / "run").exists()


def test_shipped_configs_export_beside_the_bundled_models():
    import yaml

    for name in ("teacher", "distill", "dit-teacher", "dit-distill"):
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert config["export"].startswith("runs/linfuse-emoji-"), name
        assert config["output_dir"].startswith("runs/"), name


# ---- atomic writes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_created_with_the_umasks_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
        folder = atomic_folder(tmp_path / "f", lambda tmp: (tmp / "b.txt").write_text("y"), made_by="test",
                               kind="a test")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert stat.S_IMODE((folder / "b.txt").stat().st_mode) == mode
    assert stat.S_IMODE(folder.stat().st_mode) == mode | 0o111 & ~umask  # folders: 0o777 less the umask


def test_atomic_folder_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path):
    target = tmp_path / "out"
    atomic_folder(target, lambda tmp: (tmp / "v").write_text("1"), made_by="test", kind="a test")

    def fails(tmp):
        (tmp / "v").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_folder(target, fails, made_by="test", kind="a test")
    assert (target / "v").read_text() == "1"
    target.rename(tmp_path / ".out.linfuse-old")  # a crash between the two renames: only the old folder is left
    atomic_folder(target, lambda tmp: (tmp / "v").write_text("2"), made_by="test", kind="a test")
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InvalidArgumentError, match="made by linfuse test for a test, not for a pipeline"):
        atomic_folder(target, lambda tmp: None, made_by="distill", kind="a pipeline")


# ---- text files must be UTF-8 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, data, line, column", [
    (".txt", b"# prompts\nred apple\ncaf\xe9 on a blue background\n", 3, 4),
    (".jsonl", b'{"prompt": "a cat"}\n{"prompt": "a \xff dog"}\n', 2, 15),
])
def test_a_prompt_file_that_is_not_utf8_names_the_line(tmp_path, capsys, suffix, data, line, column):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(data)
    assert main(["batch", str(path), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "none")]) == 2
    byte = "e9" if suffix == ".txt" else "ff"
    assert capsys.readouterr().err == (f"linfuse: error: prompt file {path} line {line} is not UTF-8 text (byte "
                                       f"0x{byte} at column {column}); save the file as UTF-8\n")
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_utf8_names_the_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: teacher\noutput_dir: r\xc3\n")
    assert main(["distill", str(path)]) == 2
    assert capsys.readouterr().err == (f"linfuse: error: config file {path} line 2 is not UTF-8 text (byte 0xc3 at "
                                       "column 14); save the file as UTF-8\n")


def test_a_utf8_bom_is_accepted(tmp_path):
    from linfuse.distill.recipe import load_distill_config

    prompts = tmp_path / "p.txt"
    prompts.write_bytes("\ufeffcafé on a blue background\nred apple\n".encode())
    jobs = read_jobs(prompts, GenerationParams(prompt="", width=64, height=64))
    assert [job.prompt for job in jobs] == ["café on a blue background", "red apple"]
    config = tmp_path / "c.yaml"
    config.write_bytes("\ufeffmodel: teacher\nkd_weight: 0.25\n".encode())
    assert load_distill_config(config).kd_weight == 0.25


# ---- batch: foreign folders and stale images ----------------------------------------------------------------------

def test_batch_refuses_a_foreign_out_folder_before_loading_and_overwrite_keeps_its_files(tmp_path, capsys):
    kept = foreign_folder(tmp_path / "out")
    prompts = tmp_path / "p.txt"
    prompts.write_text("red apple on a blue background\n")
    assert main(["batch", str(prompts), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == (
        f"linfuse: error: --out {tmp_path / 'out'} exists and was not made by linfuse (no {MARKER} file); it holds "
        "notes.txt, photos/; choose a new or empty folder, or pass --overwrite to write into it anyway (files of "
        "the names linfuse writes are replaced, nothing else is touched)\n")
    assert main(["batch", str(prompts), "--out", str(tmp_path / "out"), "--overwrite", *BATCH]) == 0
    assert {name: data for name, data in contents(tmp_path / "out").items() if name.suffix != ".png"
            and name.name != MARKER} == kept
    assert read_png_parameters(tmp_path / "out" / "00000-10.png").prompt == "red apple on a blue background"


def test_a_changed_prompt_line_makes_its_image_again_and_no_overwrite_refuses(tmp_path, capsys):
    prompts, out = tmp_path / "p.txt", tmp_path / "out"
    prompts.write_text("red apple on a blue background\ndog face on a yellow background\n")
    assert main(["batch", str(prompts), "--out", str(out), *BATCH]) == 0
    first = contents(out)
    capsys.readouterr()

    prompts.write_text("red apple on a blue background\ncat face on a pink background\n")
    assert main(["batch", str(prompts), "--out", str(out), "--no-overwrite", *BATCH]) == 2
    assert capsys.readouterr().err == (
        f"linfuse: error: --no-overwrite: 1 finished image(s) in {out} were made with other parameters than the "
        "prompt file asks now, e.g. 00001-11.png (prompt differ); run without --no-overwrite to make them again, or "
        "choose another --out\n")
    assert contents(out) == first

    assert main(["batch", str(prompts), "--out", str(out), *BATCH]) == 0
    assert capsys.readouterr().out.endswith(f"wrote 1 images to {out} (1 of 2 were there already or made by other "
                                            "processes; 1 stale, made with other parameters, were made again)\n")
    now = contents(out)
    assert now[next(p for p in now if p.name == "00000-10.png")] == first[next(p for p in first
                                                                              if p.name == "00000-10.png")]
    assert read_png_parameters(out / "00001-11.png").prompt == "cat face on a pink background"

    # what only the loaded model says (here the method) is compared too, before any image is made
    assert main(["batch", str(prompts), "--out", str(out), "--method", "none", "--no-overwrite", *BATCH]) == 2
    assert "2 finished image(s)" in capsys.readouterr().err and contents(out) == now


def test_eval_refuses_a_foreign_out_folder_before_loading(tmp_path, capsys):
    kept = foreign_folder(tmp_path / "eval")
    assert main(["eval", "--out", str(tmp_path / "eval"), "--student", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith(f"linfuse: error: --out {tmp_path / 'eval'} exists and was not made "
                                              f"by linfuse (no {MARKER} file); it holds notes.txt, photos/;")
    assert contents(tmp_path / "eval") == kept
