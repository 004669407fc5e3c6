"""Pictures to train and evaluate the SR companions on, all from installed packages (nothing is downloaded).

* Photographs and scans that ship inside the scikit-image wheel (``skimage/data``; public-domain or CC0 pictures,
  see scikit-image's data README). Three colour photographs are held out for evaluation and never trained on.
* Renders of the default model's domain: emoji glyphs from Debian's Noto Color Emoji font on plain backgrounds, at
  128×128 (the font's 109-pixel strike, so the glyphs stay sharp). Training and held-out renders use disjoint seeds.

The models work on luma: Y of PIL's YCbCr (full range, Y = 0.299 R + 0.587 G + 0.114 B), scaled to [0, 1]. Low-
resolution inputs are bicubic (antialiased) downscales of the high-resolution picture, as in the SR literature.
"""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import LinfuseError

TRAIN_PHOTOS = ("motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
                "rocket.jpg", "color.png", "logo.png", "brick.png", "grass.png", "gravel.png", "camera.png",
                "coins.png", "moon.png", "page.png", "text.png", "cell.png")
HELD_OUT_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
EMOJI_SIZE = 128
TRAIN_EMOJI_SEEDS = range(0, 64)
HELD_OUT_EMOJI_SEEDS = range(1_000_000, 1_000_012)


def package_photo_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise LinfuseError("the SR training and evaluation pictures come with scikit-image; install it with "
                           "`pip install scikit-image` (or `pip install -e '.[test]'`)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photo(name: str) -> Image.Image:
    path = package_photo_folder() / name
    if not path.is_file():
        raise LinfuseError(f"{path} is missing from the installed scikit-image; reinstall it")
    image = Image.open(path)
    if image.mode == "RGBA":  # composite on white, as a viewer would show it
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
    return image.convert("RGB")


def emoji_renders(seeds) -> list[Image.Image]:
    from ...distill.emoji import EmojiComposition, EmojiSource

    source = EmojiSource(EmojiComposition(resolution=EMOJI_SIZE))
    return [source.sample(seed)[0] for seed in seeds]


def training_pictures() -> list[Image.Image]:
    return [load_photo(name) for name in TRAIN_PHOTOS] + emoji_renders(TRAIN_EMOJI_SEEDS)


def held_out_pictures() -> dict[str, Image.Image]:
    """Name → picture: the held-out photographs, then the held-out emoji renders."""
    pictures = {Path(name).stem: load_photo(name) for name in HELD_OUT_PHOTOS}
    pictures.update({f"emoji-{seed}": image for seed, image in zip(HELD_OUT_EMOJI_SEEDS,
                                                                  emoji_renders(HELD_OUT_EMOJI_SEEDS), strict=True)})
    return pictures


def crop_to_multiple(image: Image.Image, scale: int) -> Image.Image:
    return image.crop((0, 0, image.width - image.width % scale, image.height - image.height % scale))


def downscale(image: Image.Image, scale: int) -> Image.Image:
    """The low-resolution input: an antialiased bicubic downscale of a picture cropped to a multiple of ``scale``."""
    return image.resize((image.width // scale, image.height // scale), Image.BICUBIC)


def to_luma(image: Image.Image) -> np.ndarray:
    """Full-range luma in [0, 1] (float32, H×W): what the SR models read and write."""
    return np.asarray(image.convert("YCbCr"), dtype=np.float32)[..., 0] / 255.0


class PatchSampler:
    """Random aligned (low-res, high-res) luma patch pairs with flips and 90° turns, from a fixed generator."""

    def __init__(self, pictures: list[Image.Image], scale: int, patch: int, seed: int = 0):
        self.scale, self.patch = scale, patch
        self.rng = np.random.default_rng(seed)
        self.pairs = []
        for picture in pictures:
            picture = crop_to_multiple(picture, scale)
            if min(picture.size) >= patch * scale:
                self.pairs.append((to_luma(downscale(picture, scale)), to_luma(picture)))
        if not self.pairs:
            raise LinfuseError(f"no training picture is at least {patch * scale} pixels on its short side")
        self.weights = np.array([low.size for low, _ in self.pairs], dtype=np.float64)  # every pixel equally likely
        self.weights /= self.weights.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = [], []
        for index in self.rng.choice(len(self.pairs), size=size, p=self.weights):
            low, high = self.pairs[index]
            y = self.rng.integers(0, low.shape[0] - self.patch + 1)
            x = self.rng.integers(0, low.shape[1] - self.patch + 1)
            s, p = self.scale, self.patch
            low_patch, high_patch = low[y:y + p, x:x + p], high[y * s:(y + p) * s, x * s:(x + p) * s]
            turns, flip = self.rng.integers(0, 4), self.rng.integers(0, 2)
            low_patch, high_patch = np.rot90(low_patch, turns), np.rot90(high_patch, turns)
            if flip:
                low_patch, high_patch = low_patch[:, ::-1], high_patch[:, ::-1]
            lows.append(low_patch)
            highs.append(high_patch)
        return np.stack(lows)[:, None].copy(), np.stack(highs)[:, None].copy()
