"""``linfuse batch``: prompt files, resume after a kill (byte-identical), and a split across two processes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linfuse.cli import main
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams, read_png_parameters
from linfuse.pipelines.batch import read_jobs

PROMPTS = ["red apple on a blue background", "dog face on a yellow background", "banana on a green background",
           "cat face on a pink background", "penguin on an orange background", "sunflower on a purple background"]
ARGS = ["--steps", "6", "--seed", "10", "--device", "cpu"]


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("# emoji prompts\n" + "\n".join(prompts[:3]) + "\n\n" + "\n".join(prompts[3:]) + "\n")
    return path


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of six prompts."""
    root = tmp_path_factory.mktemp("batch")
    prompts = write_prompts(root / "prompts.txt")
    assert main(["batch", str(prompts), "--out", str(root / "whole"), *ARGS]) == 0
    return prompts, pngs(root / "whole")


def test_text_file_gives_one_image_per_prompt_with_consecutive_seeds(reference):
    _, images = reference
    assert list(images) == [f"{k:05d}-{10 + k}.png" for k in range(6)]
    assert len(set(images.values())) == 6


def test_parameters_are_recorded_in_each_png(reference, tmp_path):
    _, images = reference
    (tmp_path / "a.png").write_bytes(images["00001-11.png"])
    params = read_png_parameters(tmp_path / "a.png")
    assert (params.prompt, params.seed, params.steps, params.width) == (PROMPTS[1], 11, 6, 64)
    assert params.guidance == 5.0 and params.method == "linfusion"


def test_rerun_skips_finished_images_and_clears_leftovers(reference, tmp_path, capsys):
    prompts, images = reference
    out = tmp_path / "partial"
    out.mkdir()
    for name in list(images)[:2]:
        (out / name).write_bytes(images[name])
    (out / ".00002-12.png.abc.tmp").write_bytes(b"half a png")  # what a killed write leaves
    assert main(["batch", str(prompts), "--out", str(out), *ARGS]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert pngs(out) == images and not list(out.glob(".*.tmp"))


def test_killed_run_resumed_is_byte_identical_to_an_uninterrupted_one(reference, tmp_path):
    prompts, images = reference
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "linfuse", "batch", str(prompts), "--out", str(out), *ARGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*.png")):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(out.glob("*.png")))
    assert 0 < done < len(images), "the run was not interrupted mid-way; make the jobs slower"
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert pngs(out) == images and not list(out.glob(".*.tmp"))


def test_two_processes_share_the_prompts_and_make_each_image_once(reference, tmp_path):
    prompts, images = reference
    out = tmp_path / "split"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "linfuse", "batch", str(prompts), "--out",
                             str(out), *ARGS], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote 3 images") == 2  # three each
    assert list(pngs(out)) == list(images)


@pytest.mark.parametrize("content, suffix, message", [
    ('{"prompt": "a cat", "sed": 3}', ".jsonl", "line 1: unknown fields sed; allowed: prompt, seed"),
    ('{"prompt": "a cat"}\n{"prompt": "x", "width": 100}', ".jsonl", "line 2: width must be a multiple of 8"),
    ('{"prompt": "a cat", "steps": "10"}', ".jsonl", "line 1: steps must be of type"),
    ("not json", ".jsonl", "line 1: not a JSON object"),
    ("# only a comment\n", ".txt", "holds no prompt"),
    ("a cat", ".csv", "must end in .txt or .jsonl"),
])
def test_bad_prompt_files_name_the_line_and_field(tmp_path, content, suffix, message):
    path = tmp_path / f"prompts{suffix}"
    path.write_text(content)
    with pytest.raises(InvalidArgumentError, match=message):
        read_jobs(path, GenerationParams(prompt="", width=64, height=64))


def test_jsonl_fields_override_the_defaults(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat", "seed": 7, "width": 128, "guidance": 3}\n{"prompt": "a dog"}\n')
    first, second = read_jobs(path, GenerationParams(prompt="", width=64, height=64, seed=100))
    assert (first.seed, first.width, first.height, first.guidance) == (7, 128, 64, 3)
    assert (second.prompt, second.seed) == ("a dog", 101)
    native, sized = read_jobs(path, GenerationParams(prompt="", width=0, height=0))[::-1]  # 0 = native, later
    assert (native.width, native.height, sized.width, sized.height) == (0, 0, 128, 0)


def test_bad_batch_arguments_exit_2_before_loading(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
