"""Image-to-image (SDEdit) with the bundled student at sizes other than its native one."""

import numpy as np
import pytest
from PIL import Image

from linfuse.cli import main
from linfuse.distill.emoji import EmojiComposition, EmojiSource
from linfuse.errors import InvalidArgumentError
from linfuse.pipelines import GenerationParams
from linfuse.pipelines.img2img import img2img


@pytest.fixture(scope="module")
def picture():
    """Two emoji renders side by side: 128×64, twice the student's native width."""
    source = EmojiSource(EmojiComposition(resolution=64))
    canvas = Image.new("RGB", (128, 64))
    canvas.paste(source.render(0, "blue"), (0, 0))
    canvas.paste(source.render(40, "blue"), (64, 0))
    return canvas


def params(**kwargs):
    return GenerationParams(prompt="red apple on a blue background", steps=10, guidance=5.0, seed=3, **kwargs)


def mean_difference(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_low_strength_keeps_the_picture_and_high_strength_changes_it(student, picture):
    gentle = img2img(student, picture, params(), strength=0.2)
    strong = img2img(student, picture, params(), strength=0.9)
    assert gentle.size == strong.size == (128, 64)
    assert mean_difference(gentle, picture) < mean_difference(strong, picture)
    assert mean_difference(gentle, picture) < 40  # 0…255 scale: the layout survives
    again = img2img(student, picture, params(), strength=0.2)
    assert np.array_equal(np.asarray(again), np.asarray(gentle))  # a seed means the same result


def test_an_explicit_size_resizes_the_input(student, picture):
    assert img2img(student, picture, params(), strength=0.3, size=(96, 48)).size == (96, 48)


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True])
def test_strength_outside_0_1_is_refused(student, picture, strength):
    with pytest.raises(InvalidArgumentError, match="strength must be in \\(0, 1\\]"):
        img2img(student, picture, params(), strength=strength)


def test_too_few_steps_for_the_strength_are_refused_before_any_work(student, picture):
    calls = []
    handle = student.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    request = params()
    request.steps = 4
    try:
        with pytest.raises(InvalidArgumentError, match=r"steps must be at least 5 for strength 0.2: image-to-image "
                                                       r"runs int\(steps × strength\) = int\(4 × 0.2\) = 0"):
            img2img(student, picture, request, strength=0.2)
    finally:
        handle.remove()
    assert not calls


def test_img2img_command_rounds_the_input_size_down_to_multiples_of_8(tmp_path, picture, capsys):
    source = tmp_path / "in.png"
    picture.resize((133, 70)).save(source)
    out = tmp_path / "out.png"
    assert main(["img2img", str(source), "red apple on a blue background", "--strength", "0.3", "--steps", "4",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (128, 64)
    assert "strength 0.3" in capsys.readouterr().out
    assert main(["img2img", str(source), "apple", "--strength", "2"]) == 2
    assert "strength must be in (0, 1]" in capsys.readouterr().err
