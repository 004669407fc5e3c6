"""``linfuse eval``: a student against its teacher on fixed prompts and seeds.

Per (prompt, seed) pair both models generate with the same initial noise; reported per pair and on average:
    PSNR = 10·log10(255² / mean((x_s − x_t)²))          on the 8-bit RGB images
    latent distance = ‖E(x_s) − E(x_t)‖₂ / √numel      E = the teacher VAE's encoder mean, scaled as the UNet sees it
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..fileio import atomic_write, read_text

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "configs" / "eval_prompts.txt"


@dataclass
class PairScore:
    prompt: str
    seed: int
    psnr: float
    latent_distance: float


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InvalidArgumentError(f"images differ in size: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@torch.no_grad()
def latent_distance(vae, a: Image.Image, b: Image.Image) -> float:
    from .emoji import to_tensor

    pixels = to_tensor([a, b]).to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor
    return float((latents[0] - latents[1]).pow(2).mean().sqrt())


def read_prompts(path=None) -> list[str]:
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.is_file():
        raise InvalidArgumentError(f"prompt file {path} does not exist")
    lines = read_text(path, "prompt file").split("\n")
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise InvalidArgumentError(f"prompt file {path} has no prompt")
    return prompts


def compare(student, teacher, prompts: list[str], seeds: list[int], *, steps: int = 20, guidance: float = 5.0,
            progress: bool = True) -> tuple[list[PairScore], list[tuple[Image.Image, Image.Image]]]:
    """Generate every (prompt, seed) with both pipelines; returns the scores and the image pairs."""
    from ..pipelines import GenerationParams, generate, native_size

    width, height = native_size(teacher)
    scores, images = [], []
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    for prompt, seed in tqdm(pairs, desc="eval", disable=not progress):
        params = GenerationParams(prompt=prompt, steps=steps, guidance=guidance, seed=seed, width=width,
                                  height=height)
        student_image = generate(student, params, progress=False)
        teacher_image = generate(teacher, params, progress=False)
        scores.append(PairScore(prompt, seed, psnr(student_image, teacher_image),
                                latent_distance(teacher.vae, student_image, teacher_image)))
        images.append((student_image, teacher_image))
    return scores, images


def summarize(scores: list[PairScore]) -> dict:
    finite = [s.psnr for s in scores if math.isfinite(s.psnr)]
    return {"pairs": len(scores), "mean_psnr": float(np.mean(finite)) if finite else math.inf,
            "mean_latent_distance": float(np.mean([s.latent_distance for s in scores]))}


def write_report(scores: list[PairScore], path) -> Path:
    lines = [json.dumps(asdict(score)) for score in scores] + [json.dumps({"summary": summarize(scores)})]
    return atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def sample_sheet(rows: list[list[Image.Image]], labels: list[str], *, scale: int = 2,
                 label_width: int = 230) -> Image.Image:
    """A grid: one row per label, images enlarged ``scale``× (nearest) so small samples stay readable."""
    cell = rows[0][0].width * scale
    sheet = Image.new("RGB", (label_width + cell * max(map(len, rows)), cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, label) in enumerate(zip(rows, labels, strict=True)):
        draw.text((6, r * cell + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(row):
            sheet.paste(image.resize((cell, cell), Image.NEAREST), (label_width + c * cell, r * cell))
    return sheet


class TemplateClassifier:
    """Names the emoji in a generated image by its nearest render (pixel L2) among every glyph of the catalogue on
    the prompt's background, at 3 scales × 9 placements. Crude, but a fixed background leaves mostly the glyph's
    shape and colours to decide, and it needs no pretrained network."""

    SCALES = (0.6, 0.75, 0.9)
    OFFSETS = (0.0, 0.5, 1.0)

    def __init__(self, source):
        self.source = source
        self._templates: dict[str, np.ndarray] = {}

    def templates(self, background: str) -> np.ndarray:
        if background not in self._templates:
            renders = [[np.asarray(self.source.render(i, background, scale=s, offset=(x, y)), dtype=np.float32)
                        for s in self.SCALES for x in self.OFFSETS for y in self.OFFSETS]
                       for i in range(len(self.source.catalogue))]
            self._templates[background] = np.asarray(renders).reshape(len(renders), len(renders[0]), -1)
        return self._templates[background]

    def rank(self, image: Image.Image, index: int, background: str) -> int:
        """0 when the nearest glyph is the right one, 1 when it is second, …"""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(1, 1, -1)
        distance = ((self.templates(background) - pixels) ** 2).mean(axis=2).min(axis=1)
        return int((distance < distance[index]).sum())


def classification_prompts(source, backgrounds: list[str]) -> list[tuple[int, str, str]]:
    """One prompt per glyph, backgrounds cycling: (glyph index, background, prompt)."""
    return [(i, backgrounds[i % len(backgrounds)], source.caption(i, backgrounds[i % len(backgrounds)]))
            for i in range(len(source.catalogue))]


def glyph_pictures(pipe, source, *, seed: int = 0, steps: int = 20, guidance: float = 5.0,
                   progress: bool = True) -> tuple[list[tuple[int, str, str]], list[Image.Image]]:
    """One picture per glyph (backgrounds cycling): the (glyph, background, prompt) list and the pictures."""
    from ..pipelines import GenerationParams, generate, native_size

    width, height = native_size(pipe)
    prompts = classification_prompts(source, source.composition.backgrounds)
    pictures = [generate(pipe, GenerationParams(prompt=prompt, steps=steps, guidance=guidance, seed=seed,
                                                width=width, height=height), progress=False)
                for _, _, prompt in tqdm(prompts, desc="glyph pictures", disable=not progress)]
    return prompts, pictures


def template_accuracy(source, prompts: list[tuple[int, str, str]], pictures: list[Image.Image]) -> dict:
    """Top-1 / top-5 accuracy of the nearest-template classifier (chance: 1/144 and 5/144)."""
    classifier = TemplateClassifier(source)
    ranks = np.asarray([classifier.rank(picture, index, background)
                        for (index, background, _), picture in zip(prompts, pictures, strict=True)])
    return {"prompts": len(ranks), "top1": float((ranks == 0).mean()), "top5": float((ranks < 5).mean()),
            "chance_top1": 1 / len(source.catalogue)}
