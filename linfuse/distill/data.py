"""Training data: emoji renders, an image folder with captions, a saved ``datasets`` folder, or teacher samples.

Every source answers ``batch(generator, size)`` with a dict: ``captions`` (list of str) and either ``pixels``
(B, 3, H, W) in [-1, 1] or ``latents`` (already in the UNet's scaled latent space). Draws come only from the given
generator, so batches are reproducible per step.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InvalidArgumentError, LinfuseError
from ..fileio import atomic_write, read_text
from .emoji import EmojiComposition, EmojiSource, to_tensor

SOURCES = ("emoji", "imagefolder", "saved_dataset", "teacher_samples")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class EmojiOptions:
    backgrounds: list[str] = field(default_factory=lambda: list(EmojiComposition().backgrounds))
    scale: tuple[float, float] = (0.6, 0.9)
    max_count: int = 1
    font: str | None = None
    ranges: tuple[tuple[int, int], ...] = EmojiComposition().ranges


@dataclass
class DataConfig:
    source: str = "emoji"
    path: str | None = None  # imagefolder / saved_dataset: where; teacher_samples: cache folder
    resolution: int = 64
    image_column: str = "image"
    caption_column: str = "text"
    prompts: str | None = None  # teacher_samples: a text file, one prompt per line (default: emoji captions)
    num_samples: int = 512
    sample_steps: int = 20
    sample_guidance: float = 5.0
    emoji: EmojiOptions = field(default_factory=EmojiOptions)

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise InvalidArgumentError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if not 16 <= self.resolution <= 4096 or self.resolution % 8:
            raise InvalidArgumentError(f"data.resolution must be a multiple of 8 in [16, 4096]; got {self.resolution}")
        if self.source in ("imagefolder", "saved_dataset") and not (self.path and Path(self.path).is_dir()):
            raise InvalidArgumentError(f"data.path must be an existing folder for source {self.source!r}; "
                                       f"got {self.path!r}")
        if self.source == "teacher_samples" and (self.num_samples < 1 or self.sample_steps < 1):
            raise InvalidArgumentError("data.num_samples and data.sample_steps must be >= 1")
        if self.prompts:
            self.prompt_lines()  # a missing or undecodable file is named before any model loads

    def prompt_lines(self) -> list[str]:
        """The non-blank lines of ``prompts`` (a UTF-8 text file)."""
        if not Path(self.prompts).is_file():
            raise InvalidArgumentError(f"data.prompts {self.prompts} does not exist")
        return [line for line in read_text(self.prompts, "data.prompts file").split("\n") if line.strip()]

    def composition(self) -> EmojiComposition:
        options = self.emoji
        return EmojiComposition(resolution=self.resolution, backgrounds=options.backgrounds, scale=options.scale,
                                max_count=options.max_count, font=options.font, ranges=options.ranges)


def _draw_indices(generator: torch.Generator, count: int, size: int) -> list[int]:
    return torch.randint(0, count, (size,), generator=generator).tolist()


class EmojiBatches:
    def __init__(self, config: DataConfig):
        self.source = EmojiSource(config.composition())

    def captions(self) -> list[str]:
        composition = self.source.composition
        return [self.source.caption(i, bg) for i in range(len(self.source.catalogue)) for bg in composition.backgrounds]

    def batch(self, generator: torch.Generator, size: int) -> dict:
        seeds = torch.randint(0, 2**62, (size,), generator=generator).tolist()
        samples = [self.source.sample(seed) for seed in seeds]
        return {"pixels": to_tensor([image for image, _ in samples]), "captions": [c for _, c in samples],
                "labels": torch.tensor([self.source.label(seed) for seed in seeds])}


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (bicubic) and centre-crop a square."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class ImageFolderBatches:
    """Images with captions in a same-named ``.txt`` file, or in ``metadata.jsonl`` rows {"file_name", "text"}."""

    def __init__(self, config: DataConfig):
        root = Path(config.path)
        self.resolution = config.resolution
        captions = {}
        metadata = root / "metadata.jsonl"
        if metadata.exists():
            for line in read_text(metadata, "caption file").split("\n"):
                if line.strip():
                    row = json.loads(line)
                    captions[row["file_name"]] = row.get(config.caption_column, row.get("text", ""))
        self.items = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            text_file = path.with_suffix(".txt")
            caption = read_text(text_file, "caption file").strip() if text_file.exists() else captions.get(
                str(path.relative_to(root)))
            if caption is not None:
                self.items.append((path, caption))
        if not self.items:
            raise InvalidArgumentError(f"data.path {root} holds no image with a caption (a .txt beside it, or a row "
                                       "in metadata.jsonl)")

    def batch(self, generator: torch.Generator, size: int) -> dict:
        picked = [self.items[i] for i in _draw_indices(generator, len(self.items), size)]
        images = [square(Image.open(path), self.resolution) for path, _ in picked]
        return {"pixels": to_tensor(images), "captions": [caption for _, caption in picked]}


class SavedDatasetBatches:
    """A folder written by ``datasets.Dataset.save_to_disk`` with an image and a caption column."""

    def __init__(self, config: DataConfig):
        try:
            import datasets
        except ImportError as exc:
            raise LinfuseError("data.source 'saved_dataset' needs the datasets package: pip install datasets") from exc
        data = datasets.load_from_disk(config.path)
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
        for column in (config.image_column, config.caption_column):
            if column not in data.column_names:
                raise InvalidArgumentError(f"the dataset at {config.path} has no column {column!r}; columns: "
                                           f"{', '.join(data.column_names)} (set data.image_column/caption_column)")
        self.data, self.config = data, config

    def batch(self, generator: torch.Generator, size: int) -> dict:
        rows = [self.data[i] for i in _draw_indices(generator, len(self.data), size)]
        images = [square(row[self.config.image_column], self.config.resolution) for row in rows]
        return {"pixels": to_tensor(images), "captions": [row[self.config.caption_column] for row in rows]}


class TeacherSampleBatches:
    """Latents the teacher generated for a prompt list, cached as safetensors shards (resumable, atomic)."""

    SHARD = 16

    def __init__(self, config: DataConfig, pipe, cache_dir: Path, prompts: list[str]):
        self.cache_dir = Path(config.path or cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        latents, captions = [], []
        shards = -(-config.num_samples // self.SHARD)
        for shard in range(shards):
            path = self.cache_dir / f"shard-{shard:05d}.safetensors"
            if not path.exists():
                self._generate(pipe, config, prompts, shard, path)
            with safe_open(str(path), "pt") as handle:
                latents.append(handle.get_tensor("latents"))
                captions += json.loads(handle.metadata()["captions"])
        self.latents = torch.cat(latents)[: config.num_samples]
        self.captions = captions[: config.num_samples]

    def _generate(self, pipe, config: DataConfig, prompts: list[str], shard: int, path: Path) -> None:
        picked = [prompts[(shard * self.SHARD + i) % len(prompts)] for i in range(self.SHARD)]
        generator = torch.Generator().manual_seed(shard)
        from ..pipelines.families import call_arguments, unpack_latents

        out = pipe(picked, num_inference_steps=config.sample_steps, height=config.resolution,
                   width=config.resolution, generator=generator, output_type="latent",
                   **call_arguments(pipe, config.sample_guidance, None))
        latents = unpack_latents(pipe, out.images, config.resolution, config.resolution)
        tensors = {"latents": latents.float().cpu().contiguous()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"captions": json.dumps(picked)}))

    def batch(self, generator: torch.Generator, size: int) -> dict:
        index = _draw_indices(generator, len(self.captions), size)
        return {"latents": self.latents[index], "captions": [self.captions[i] for i in index]}


def drop_captions(captions: list[str], probability: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by "" with ``probability``: the unconditional branch classifier-free guidance reads."""
    drop = torch.rand(len(captions), generator=generator) < probability
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


def build_source(config: DataConfig, *, pipe=None, cache_dir: Path | None = None):
    config.validate()
    if config.source == "emoji":
        return EmojiBatches(config)
    if config.source == "imagefolder":
        return ImageFolderBatches(config)
    if config.source == "saved_dataset":
        return SavedDatasetBatches(config)
    prompts = config.prompt_lines() if config.prompts else [p for p in EmojiBatches(config).captions() if p.strip()]
    if not prompts:
        raise InvalidArgumentError(f"data.prompts {config.prompts} has no prompt")
    return TeacherSampleBatches(config, pipe, cache_dir, prompts)
