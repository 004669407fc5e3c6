"""Emoji renders, caption tokenizer, data sources and YAML configs of the distillation package."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from linfuse.distill.config import from_mapping
from linfuse.distill.data import DataConfig, build_source
from linfuse.distill.emoji import BACKGROUNDS, EmojiComposition, EmojiSource
from linfuse.distill.recipe import DistillConfig
from linfuse.distill.tokenizer import build_tokenizer, caption_words
from linfuse.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def source():
    return EmojiSource(EmojiComposition(resolution=32))


def test_catalogue_names_real_glyphs(source):
    assert len(source.catalogue) == 144  # U+1F330–1F37F and U+1F400–1F43F drawn by Noto Color Emoji 2.042
    assert {"red apple", "dog face", "sunflower", "penguin"} <= set(source.names)


def test_render_puts_the_glyph_on_the_named_background(source):
    index = source.names.index("red apple")
    image = source.render(index, "blue", scale=0.5, offset=(0.0, 0.0))
    pixels = np.asarray(image)
    assert image.size == (32, 32)
    assert tuple(pixels[-1, -1]) == BACKGROUNDS["blue"]  # far corner: background
    red = (pixels[..., 0].astype(int) - pixels[..., 2]) > 80
    assert red[:16, :16].mean() > 0.3 and red[16:, 16:].mean() == 0  # the apple sits in the top-left quarter
    assert source.caption(index, "blue") == "red apple on a blue background"
    assert source.caption(index, "orange", count=2) == "two red apples on an orange background"


def test_samples_are_a_pure_function_of_the_seed(source):
    (a, caption_a), (b, caption_b) = source.sample(7), source.sample(7)
    assert caption_a == caption_b and np.array_equal(np.asarray(a), np.asarray(b))
    assert any(source.sample(s)[1] != caption_a for s in range(8, 12))


@pytest.mark.parametrize("field, value, message", [
    ("resolution", 30, "multiple of 8"), ("backgrounds", ["teal"], "subset of"), ("scale", (0.9, 0.5), "low <= high"),
    ("max_count", 4, "1, 2 or 3")])
def test_bad_composition_is_refused(field, value, message):
    with pytest.raises(InvalidArgumentError, match=message):
        EmojiComposition(**{field: value}).validate()


def test_tokenizer_spells_known_words_whole_and_still_reads_unknown_ones():
    tokenizer = build_tokenizer(caption_words(["red apple on a blue background", "dog face"]))
    ids = tokenizer("red apple on a blue background").input_ids
    assert len(ids) == 2 + 6  # start, six whole words, end
    assert tokenizer.decode(ids, skip_special_tokens=True) == "red apple on a blue background"
    unknown = tokenizer("zebra").input_ids
    assert len(unknown) == 2 + 5 and tokenizer.decode(unknown, skip_special_tokens=True) == "zebra"


def test_emoji_batches_are_reproducible_per_generator():
    data = build_source(DataConfig(resolution=32))
    a = data.batch(torch.Generator().manual_seed(3), 4)
    b = data.batch(torch.Generator().manual_seed(3), 4)
    assert a["pixels"].shape == (4, 3, 32, 32) and torch.equal(a["pixels"], b["pixels"])
    assert a["captions"] == b["captions"] and -1 <= a["pixels"].min() and a["pixels"].max() <= 1


def test_image_folder_reads_txt_and_metadata_captions(tmp_path):
    Image.new("RGB", (48, 32), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "red.txt").write_text("a red square\n")
    Image.new("RGB", (32, 64), (0, 0, 255)).save(tmp_path / "blue.jpg")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "blue.jpg", "text": "a blue square"}) + "\n")
    Image.new("RGB", (32, 32)).save(tmp_path / "uncaptioned.png")
    data = build_source(DataConfig(source="imagefolder", path=str(tmp_path), resolution=16))
    assert sorted(c for _, c in data.items) == ["a blue square", "a red square"]
    batch = data.batch(torch.Generator().manual_seed(0), 6)
    assert batch["pixels"].shape == (6, 3, 16, 16)
    for pixels, caption in zip(batch["pixels"], batch["captions"], strict=True):
        channel = 0 if caption == "a red square" else 2
        assert torch.allclose(pixels[channel], torch.ones(16, 16), atol=0.02)


def test_config_rejects_unknown_keys_and_reads_yaml_number_spellings():
    config = from_mapping(DistillConfig, {"model": "m", "train": {"learning_rate": "1e-4", "steps": 5},
                                          "data": {"emoji": {"scale": [0.5, 0.7]}}}, "config")
    assert config.train.learning_rate == 1e-4 and config.data.emoji.scale == (0.5, 0.7)
    with pytest.raises(InvalidArgumentError, match="unknown key.*learnig_rate.*in config.train"):
        from_mapping(DistillConfig, {"train": {"learnig_rate": 1}}, "config")
    with pytest.raises(InvalidArgumentError, match="config.train.steps must be int"):
        from_mapping(DistillConfig, {"train": {"steps": "many"}}, "config")
    bad = from_mapping(DistillConfig, {"model": "m", "train": {"mixed_precision": "fp8"}}, "config")
    with pytest.raises(InvalidArgumentError, match="train.mixed_precision must be one of no, fp16, bf16"):
        bad.validate()


def test_saved_dataset_folder_is_read_with_its_columns(tmp_path):
    import datasets

    rows = {"picture": [Image.new("RGB", (40, 24), (0, 200, 0)), Image.new("RGB", (24, 24), (200, 0, 0))],
            "caption": ["green", "red"]}
    datasets.Dataset.from_dict(rows).cast_column("picture", datasets.Image()).save_to_disk(tmp_path / "ds")
    config = DataConfig(source="saved_dataset", path=str(tmp_path / "ds"), resolution=16, image_column="picture",
                        caption_column="caption")
    batch = build_source(config).batch(torch.Generator().manual_seed(0), 4)
    assert batch["pixels"].shape == (4, 3, 16, 16)
    for pixels, caption in zip(batch["pixels"], batch["captions"], strict=True):
        assert pixels[1 if caption == "green" else 0].mean() > 0.5
    with pytest.raises(InvalidArgumentError, match="no column 'text'.*picture, caption"):
        build_source(DataConfig(source="saved_dataset", path=str(tmp_path / "ds"), image_column="picture"))
