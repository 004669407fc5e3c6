"""PSNR / SSIM of the SR companions against bicubic on the held-out pictures (Y channel, border = scale)."""

from dataclasses import dataclass

from PIL import Image

from ..metrics import psnr_y, ssim_y
from .data import crop_to_multiple, downscale, held_out_pictures
from .tiled import upscale_image


@dataclass
class SRScore:
    method: str
    scale: int
    group: str  # "photos" or "emoji"
    psnr: float
    ssim: float


def _group(name: str) -> str:
    return "emoji" if name.startswith("emoji-") else "photos"


def score_upscaler(method: str, scale: int, upscale, pictures: dict[str, Image.Image] | None = None) -> list[SRScore]:
    """Mean PSNR/SSIM per group of ``upscale(low_res_picture) -> picture`` against the originals."""
    pictures = pictures if pictures is not None else held_out_pictures()
    sums: dict[str, list[float]] = {}
    for name, picture in pictures.items():
        original = crop_to_multiple(picture, scale)
        restored = upscale(downscale(original, scale))
        entry = sums.setdefault(_group(name), [0.0, 0.0, 0])
        entry[0] += psnr_y(restored, original, border=scale)
        entry[1] += ssim_y(restored, original, border=scale)
        entry[2] += 1
    return [SRScore(method, scale, group, p / n, s / n) for group, (p, s, n) in sums.items()]


def bicubic(scale: int):
    return lambda image: image.resize((image.width * scale, image.height * scale), Image.BICUBIC)


def with_model(model):
    return lambda image: upscale_image(image, model)
