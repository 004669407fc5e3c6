"""Labelled pictures of the default model's domain: emoji glyphs (144 classes) on plain backgrounds, 64×64.

Samples come from :class:`linfuse.distill.emoji.EmojiSource` (glyph, background, size and place drawn from a seed);
the label is the glyph index. Training and validation use disjoint seed ranges. Half of the training pictures are
blurred (Gaussian, σ up to 1.5 px) so that the classifiers also read the softer pictures a small diffusion model
makes.
"""

import random

import numpy as np
import torch
from PIL import Image, ImageFilter

from ...distill.emoji import EmojiComposition, EmojiSource

RESOLUTION = 64
VALIDATION_SEED_OFFSET = 10_000_000


def emoji_source(resolution: int = RESOLUTION) -> EmojiSource:
    return EmojiSource(EmojiComposition(resolution=resolution))


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    """RGB pictures → (B, 3, H, W) float in [0, 1]: what every classifier here reads."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 255.0


def _blurred(image: Image.Image, seed: int) -> Image.Image:
    rng = random.Random(seed ^ 0x5EED)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))) if rng.random() < 0.5 else image


def labelled_set(count: int, *, validation: bool = False, resolution: int = RESOLUTION,
                 source: EmojiSource | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures (count, 3, H, W) in [0, 1], labels (count,)): seeds 0…count−1, or the validation range."""
    source = source or emoji_source(resolution)
    first = VALIDATION_SEED_OFFSET if validation else 0
    images, labels = [], []
    for seed in range(first, first + count):
        image, _ = source.sample(seed)
        images.append(image if validation else _blurred(image, seed))
        labels.append(source.label(seed))
    return to_batch(images), torch.tensor(labels)
