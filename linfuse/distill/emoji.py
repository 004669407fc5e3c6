"""Training images rendered from Debian's Noto Color Emoji font, with their Unicode names as captions.

Each sample is one emoji glyph (a real colour bitmap from ``fonts-noto-color-emoji``, SIL OFL) scaled and placed on
a plain background; the caption is the glyph's Unicode name and the background colour, e.g.
"red apple on a blue background". Everything is a deterministic function of a seed, so a training step always
sees the same images whether or not the run was resumed.
"""

import random
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidArgumentError, LinfuseError

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
FONT_PIXELS = 109  # the only bitmap strike the CBDT font has
# Plants, food and drink (U+1F330–1F37F) and animals (U+1F400–1F43F): 144 glyphs in Noto Color Emoji 2.042.
DEFAULT_RANGES = ((0x1F330, 0x1F37F), (0x1F400, 0x1F43F))
BACKGROUNDS = {
    "white": (245, 245, 245), "black": (20, 20, 20), "red": (215, 40, 40), "orange": (240, 140, 30),
    "yellow": (245, 220, 50), "green": (50, 160, 70), "blue": (40, 90, 210), "purple": (130, 60, 180),
    "pink": (240, 150, 190), "gray": (128, 128, 128),
}
COUNT_WORDS = {1: "", 2: "two ", 3: "three "}


def find_font(path: str | None = None) -> Path:
    candidates = [path] if path else FONT_CANDIDATES
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise LinfuseError(
        f"the Noto Color Emoji font was not found (looked at {', '.join(map(str, candidates))}); install it with "
        "`apt-get install fonts-noto-color-emoji` (Debian/Ubuntu) or pass its path as data.font"
    )


@lru_cache(maxsize=4)
def emoji_catalogue(font_path: str, ranges: tuple[tuple[int, int], ...] = DEFAULT_RANGES) -> tuple:
    """(character, lower-case Unicode name) for every code point in ``ranges`` that the font draws."""
    font = ImageFont.truetype(font_path, FONT_PIXELS)
    found = []
    for first, last in ranges:
        for code in range(first, last + 1):
            char = chr(code)
            name = unicodedata.name(char, "")
            if name and _draw(font, char).getbbox():
                found.append((char, name.lower()))
    return tuple(found)


def _draw(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
    image = Image.new("RGBA", (FONT_PIXELS + 40, FONT_PIXELS + 40))
    ImageDraw.Draw(image).text((0, 0), char, font=font, embedded_color=True)
    return image


@lru_cache(maxsize=1024)
def glyph(font_path: str, char: str) -> Image.Image:
    """The glyph as an RGBA image cropped to its opaque pixels."""
    image = _draw(ImageFont.truetype(font_path, FONT_PIXELS), char)
    return image.crop(image.getbbox())


@dataclass
class EmojiComposition:
    """How samples are composed. Every option that changes the picture also changes the caption."""

    resolution: int = 64
    backgrounds: list[str] = field(default_factory=lambda: list(BACKGROUNDS))
    scale: tuple[float, float] = (0.6, 0.9)  # glyph size as a fraction of the canvas (longest side)
    max_count: int = 1  # 2 or 3 draws that many copies side by side and says "two"/"three"
    font: str | None = None
    ranges: tuple[tuple[int, int], ...] = DEFAULT_RANGES

    def validate(self) -> None:
        if not 16 <= self.resolution <= 1024 or self.resolution % 8:
            raise InvalidArgumentError(f"data.resolution must be a multiple of 8 in [16, 1024]; got {self.resolution}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if not self.backgrounds or unknown:
            raise InvalidArgumentError(f"data.backgrounds must be a non-empty subset of {', '.join(BACKGROUNDS)}; "
                                       f"got unknown {unknown or 'empty list'}")
        low, high = self.scale
        if not 0.1 <= low <= high <= 1.0:
            raise InvalidArgumentError(f"data.scale must be [low, high] with 0.1 <= low <= high <= 1; got {self.scale}")
        if self.max_count not in COUNT_WORDS:
            raise InvalidArgumentError(f"data.max_count must be 1, 2 or 3; got {self.max_count}")


class EmojiSource:
    """Renders (image, caption) samples; ``sample(seed)`` is a pure function of the seed."""

    def __init__(self, composition: EmojiComposition):
        composition.validate()
        self.composition = composition
        self.font_path = str(find_font(composition.font))
        self.catalogue = emoji_catalogue(self.font_path, tuple(map(tuple, composition.ranges)))
        if not self.catalogue:
            raise InvalidArgumentError(f"data.ranges {composition.ranges} contain no glyph of {self.font_path}")

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.catalogue]

    def render(self, index: int, background: str, *, scale: float = 0.75, count: int = 1,
               offset: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
        """Draw emoji ``index`` ``count`` times on a plain background; offset places the group (0..1 of free room)."""
        size = self.composition.resolution
        canvas = Image.new("RGBA", (size, size), BACKGROUNDS[background] + (255,))
        art = glyph(self.font_path, self.catalogue[index][0])
        side = max(4, round(size * scale / count))
        art = art.resize((max(1, round(side * art.width / max(art.size))), max(1, round(side * art.height /
                                                                                          max(art.size)))),
                         Image.LANCZOS)
        group_w, group_h = art.width * count, art.height
        left = round((size - group_w) * offset[0])
        top = round((size - group_h) * offset[1])
        for i in range(count):
            canvas.alpha_composite(art, (left + i * art.width, top))
        return canvas.convert("RGB")

    def caption(self, index: int, background: str, count: int = 1) -> str:
        name = self.catalogue[index][1]
        if count > 1:
            name = f"{COUNT_WORDS[count]}{name}{'' if name.endswith('s') else 's'}"
        article = "an" if background[0] in "aeiou" else "a"
        return f"{name} on {article} {background} background"

    def label(self, seed: int) -> int:
        """The glyph index that ``sample(seed)`` draws: a class label for class-conditional models."""
        return random.Random(seed).randrange(len(self.catalogue))

    def sample(self, seed: int) -> tuple[Image.Image, str]:
        rng = random.Random(seed)
        index = rng.randrange(len(self.catalogue))
        background = rng.choice(self.composition.backgrounds)
        count = rng.randint(1, self.composition.max_count)
        scale = rng.uniform(*self.composition.scale)
        offset = (rng.random(), rng.random())
        return self.render(index, background, scale=scale, count=count, offset=offset), self.caption(
            index, background, count)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor (B, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0
