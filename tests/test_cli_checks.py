"""What the command line refuses before it loads a model (exit 2, one line naming the parameter), and how it ends on
Ctrl-C (exit 130, one line). "No model was loaded" is proven by the loaders: they are replaced by ones that count
their calls, so a check that lets a bad input through shows up as a load."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import tiny_sd_pipeline

from linfuse.cli import main
from linfuse.pipelines.loading import BUNDLED_MODELS


class Loaded(Exception):
    """Raised by the counting loaders: the command got past its checks."""


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def loads(monkeypatch):
    """Replace the pipeline and SR loaders with ones that record the model asked for, then stop the command."""
    import linfuse.companions.sr as sr
    from linfuse.pipelines import loading

    calls = []

    def load(what, *args, **kwargs):
        calls.append(str(what))
        raise Loaded(what)

    monkeypatch.setattr(loading, "_from_pretrained", load)
    monkeypatch.setattr(sr, "load_sr", load)
    for name in ("LINFUSE_MODEL", "LINFUSE_LINEAR_ATTENTION_BACKEND", "LINFUSE_LOCAL_ATTENTION_BACKEND",
                 "LINFUSE_TRITON_AUTOTUNE"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(path)
    return path


def refused(argv, capsys, loads, *needles):
    """Run ``argv``: exit 2, one line on stderr holding every needle, no model loaded; returns the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert loads == [] and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err
    return err


def command(name, pipeline_dir, picture, out):
    """The argv of each picture-writing command, with ``out`` as its --out."""
    model = ["--model", str(pipeline_dir), "--weights", "none", "--steps", "2"]
    return {"generate": ["generate", "a cat", *model, "--out", str(out)],
            "img2img": ["img2img", str(picture), "a cat", *model, "--out", str(out)],
            "upscale": ["upscale", str(picture), "--out", str(out)]}[name]


# defect 2: output paths are checked before the model loads


@pytest.mark.parametrize("name", ["generate", "img2img", "upscale"])
@pytest.mark.parametrize("case, needle", [("under_a_file", "is a file, so no folder can be made under it"),
                                          ("proc", "cannot write in /proc"), ("folder", "is a folder"),
                                          ("jpg", "linfuse writes .png files only")])
def test_a_bad_output_file_is_refused_before_loading(name, case, needle, pipeline_dir, picture, tmp_path, capsys,
                                                     loads):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "pictures").mkdir()
    out = {"under_a_file": tmp_path / "notes.txt" / "x.png", "proc": Path("/proc/linfuse-x.png"),
           "folder": tmp_path / "pictures", "jpg": tmp_path / "x.jpg"}[case]
    refused(command(name, pipeline_dir, picture, out), capsys, loads, "--out", needle)
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list((tmp_path / "pictures").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "notes.txt", "pictures"]


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only filesystem (a tmpfs mounted ro): root ignores permission bits, not a read-only mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root in a privileged container)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("name", ["generate", "img2img", "upscale"])
def test_an_output_on_a_read_only_filesystem_is_refused_before_loading(name, read_only_folder, pipeline_dir, picture,
                                                                      capsys, loads):
    refused(command(name, pipeline_dir, picture, read_only_folder / "x.png"), capsys, loads, "--out",
            f"cannot write in {read_only_folder} (Read-only file system)")


@pytest.mark.parametrize("case, needle", [("a_file", "is a file, not a folder"),
                                          ("under_a_file", "is a file, so no folder can be made under it"),
                                          ("proc", "cannot write in /proc")])
def test_a_bad_batch_output_folder_is_refused_before_loading(case, needle, pipeline_dir, tmp_path, capsys, loads):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    (tmp_path / "notes.txt").write_text("mine")
    out = {"a_file": tmp_path / "notes.txt", "under_a_file": tmp_path / "notes.txt" / "batch",
           "proc": Path("/proc/linfuse-batch")}[case]
    refused(["batch", str(prompts), "--model", str(pipeline_dir), "--out", str(out)], capsys, loads, "--out", needle)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, needle", [(["train-sr", "--out", "sr.pt"], "writes .safetensors files only"),
                                          (["train-classifier", "--out", "notes.txt/c.safetensors"], "is a file"),
                                          (["eval", "--out", "notes.txt"], "is a file, not a folder")])
def test_training_and_eval_outputs_are_refused_before_work(argv, needle, tmp_path, monkeypatch, capsys, loads):
    import linfuse.companions.classify.train as classify_train
    import linfuse.companions.sr.train as sr_train

    monkeypatch.setattr(sr_train, "train_sr", lambda *a, **k: loads.append("train-sr"))
    monkeypatch.setattr(classify_train, "train_classifier", lambda *a, **k: loads.append("train-classifier"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    refused(argv, capsys, loads, "--out", needle)


def test_a_good_output_path_gets_through_and_the_probe_leaves_nothing(pipeline_dir, picture, tmp_path, capsys, loads):
    out = tmp_path / "new" / "deeper" / "x.png"
    with pytest.raises(Loaded):
        main(command("generate", pipeline_dir, picture, out))
    assert loads == [str(pipeline_dir)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]  # no probe file left, no folder made yet


# defect 11: input pictures are fully decoded before the model loads


@pytest.mark.parametrize("name", ["img2img", "upscale"])
@pytest.mark.parametrize("case, needle", [("truncated", "truncated or not a picture"),
                                          ("text", "truncated or not a picture"), ("missing", "does not exist")])
def test_a_bad_input_picture_is_refused_before_loading(name, case, needle, pipeline_dir, picture, tmp_path, capsys,
                                                       loads):
    bad = tmp_path / "bad.png"
    if case == "truncated":
        data = picture.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "text":
        bad.write_text("not a picture")
    refused(command(name, pipeline_dir, bad, tmp_path / "out.png"), capsys, loads, f"image {bad}", needle)


# defect 9: model names, folders and environment variables


def test_a_folder_without_model_index_says_what_a_model_folder_holds(picture, tmp_path, capsys, loads):
    folder = tmp_path / "my-model"
    folder.mkdir()
    err = refused(["generate", "a cat", "--model", str(folder), "--out", str(tmp_path / "x.png")], capsys, loads,
                  "has no model_index.json", "save_pretrained", "student")
    assert "weights='auto'" not in err


def test_a_weights_folder_given_as_model_is_named_as_such(tmp_path, capsys, loads):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "linear_attention.json").write_text("{}")
    refused(["generate", "a cat", "--model", str(folder), "--out", str(tmp_path / "x.png")], capsys, loads,
            "is a linear-attention weights folder", "--weights")


@pytest.mark.parametrize("name, bundled", [("linfuse-emoji-student", "student"), ("linfuse-emoji-teacher", "teacher")])
def test_the_folder_names_info_prints_are_the_bundled_models(name, bundled, tmp_path, monkeypatch, loads):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    with pytest.raises(Loaded):
        main(["generate", "a cat", "--model", name, "--out", "x.png"])
    assert loads == [str(BUNDLED_MODELS[bundled])]


def test_a_near_miss_of_a_bundled_name_suggests_it(tmp_path, monkeypatch, capsys, loads):
    monkeypatch.chdir(tmp_path)
    refused(["generate", "a cat", "--model", "linfuse-emoji-studnt", "--out", "x.png"], capsys, loads,
            "does not exist (did you mean 'student'?)")


@pytest.mark.parametrize("variable, value, needle", [
    ("LINFUSE_MODEL", "garbage", "$LINFUSE_MODEL: model 'garbage' does not exist"),
    ("LINFUSE_LINEAR_ATTENTION_BACKEND", "cuda", "$LINFUSE_LINEAR_ATTENTION_BACKEND must be one of auto, reference"),
    ("LINFUSE_LOCAL_ATTENTION_BACKEND", "fast", "$LINFUSE_LOCAL_ATTENTION_BACKEND must be one of auto, reference"),
    ("LINFUSE_TRITON_AUTOTUNE", "yes", "$LINFUSE_TRITON_AUTOTUNE must be 1"),
])
def test_a_bad_environment_variable_is_named_as_the_source(variable, value, needle, tmp_path, monkeypatch, capsys,
                                                           loads):
    monkeypatch.setenv(variable, value)
    refused(["generate", "a cat", "--out", str(tmp_path / "x.png")], capsys, loads, needle,
            "fix or unset the environment variable")


def test_model_from_the_environment_is_used_and_model_overrides_it(pipeline_dir, tmp_path, monkeypatch, loads):
    monkeypatch.setenv("LINFUSE_MODEL", "garbage")
    with pytest.raises(Loaded):
        main(["generate", "a cat", "--model", str(pipeline_dir), "--weights", "none", "--out", str(tmp_path / "x.png")])
    monkeypatch.setenv("LINFUSE_MODEL", str(pipeline_dir))
    with pytest.raises(Loaded):
        main(["generate", "a cat", "--weights", "none", "--out", str(tmp_path / "x.png")])
    assert loads == [str(pipeline_dir)] * 2


# defect 10: options that do not apply to the model are refused the same way at every size


@pytest.mark.parametrize("size", [[], ["--size", "64x64"], ["--size", "256x256", "--steps", "10"]])
@pytest.mark.parametrize("option, needle", [(["--ntk-factor", "10"], "--ntk-factor scales FLUX's RoPE"),
                                            (["--proportional-attention"], "--proportional-attention is an option of "
                                                                           "CLEAR attention")])
def test_options_of_another_family_are_refused_at_every_size(size, option, needle, pipeline_dir, tmp_path, capsys,
                                                             loads):
    argv = ["generate", "a cat", "--model", str(pipeline_dir), "--weights", "none", *size, *option,
            "--out", str(tmp_path / "x.png")]
    refused(argv, capsys, loads, needle, "drop")


def test_img2img_refuses_options_of_another_family(pipeline_dir, picture, tmp_path, capsys, loads):
    argv = command("img2img", pipeline_dir, picture, tmp_path / "x.png")
    refused([*argv, "--ntk-factor", "4"], capsys, loads, "--ntk-factor scales FLUX's RoPE")


def test_ntk_factor_goes_through_for_a_flux_model(tmp_path, loads):
    with pytest.raises(Loaded):
        main(["generate", "a cat", "--model", "dit-student", "--ntk-factor", "10", "--out", str(tmp_path / "x.png")])
    assert loads == [str(BUNDLED_MODELS["dit-student"])]


@pytest.mark.parametrize("model, method, needle", [("pipeline_dir", ["--method", "none"], "--method none keeps"),
                                                   ("teacher", [], "teacher runs by default with softmax")])
def test_weights_without_a_conversion_are_refused(model, method, needle, pipeline_dir, tmp_path, capsys, loads):
    model = str(pipeline_dir) if model == "pipeline_dir" else model
    weights = tmp_path / "weights"
    weights.mkdir()
    refused(["generate", "a cat", "--model", model, *method, "--weights", str(weights), "--out",
             str(tmp_path / "x.png")], capsys, loads, f"--weights {weights} needs a conversion")


# defect 13: Ctrl-C and long prompts


def _as_from_a_terminal() -> None:
    """The child's Ctrl-C as a shell gives it. An ignored SIGINT is inherited through exec, and Python then installs
    no KeyboardInterrupt handler: a test worker that ignores SIGINT (seen in the full xdist suite) would make the
    child run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_with_one_line_and_exit_130(pipeline_dir, tmp_path):
    out = tmp_path / "x.png"
    run = subprocess.Popen([sys.executable, "-m", "linfuse", "generate", "a cat", "--model", str(pipeline_dir),
                            "--weights", "none", "--size", "128x128", "--highres", "off", "--steps", "50",
                            "--out", str(out)], stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)
    seen, start = "", time.monotonic()
    while "linfusion:" not in seen:  # the conversion report: the model is loaded, the work starts
        line = run.stderr.readline()
        assert line or run.poll() is None, seen
        seen += line
        assert time.monotonic() - start < 300, seen
    run.send_signal(signal.SIGINT)
    rest = run.stderr.read()
    assert run.wait(timeout=120) == 130, rest
    assert rest.strip().splitlines()[-1] == "linfuse: interrupted" and "Traceback" not in rest, rest
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_long_prompt_is_not_echoed_whole(pipeline_dir, tmp_path, caplog, monkeypatch):
    """diffusers' notice goes to its own stderr handler, whose filter shortens the record before any other handler
    (here pytest's, which sees the record as the terminal would print it)."""
    monkeypatch.delenv("LINFUSE_MODEL", raising=False)
    prompt = "a red apple on a table " * 4500  # 103,500 characters
    assert main(["generate", prompt, "--model", str(pipeline_dir), "--weights", "none", "--steps", "1",
                 "--out", str(tmp_path / "x.png")]) == 0
    err = caplog.text
    assert "prompt truncated to 16 tokens (the text encoder's limit)" in err
    assert len(err) < 5000 and err.count("a red apple on a table") < 10
    assert os.path.getsize(tmp_path / "x.png") > 0
