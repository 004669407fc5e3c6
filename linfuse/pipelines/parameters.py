"""Generation parameters and their A1111-style text form, stored in PNG text metadata under "parameters".

The text has the prompt on the first line(s), an optional ``Negative prompt: …`` line, and a last line of
``Key: value`` pairs separated by ", "; values holding a comma, colon or quote are JSON-quoted.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..errors import InvalidArgumentError
from ..fileio import atomic_write

PNG_KEY = "parameters"
MAX_SIZE = 16384
MAX_STEPS = 1000
MAX_SEED = 2**32 - 1

_FIELDS = {  # text key -> (attribute, type)
    "Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("guidance", float), "Seed": ("seed", int),
    "Size": ("size", str), "Model": ("model", str), "Linear attention": ("method", str),
    "Linear weights": ("weights", str), "Version": ("version", str),
}
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def check_side(name: str, value, multiple_of: int = 8) -> int:
    """One image side: an int, a multiple of ``multiple_of``, from ``multiple_of`` to MAX_SIZE."""
    if isinstance(value, bool) or not isinstance(value, int) or not multiple_of <= value <= MAX_SIZE or \
            value % multiple_of:
        raise InvalidArgumentError(
            f"{name} must be a multiple of {multiple_of} between {multiple_of} and {MAX_SIZE}; got {value!r}")
    return value


GENERIC_NAMES = {"linear_attention", "unet", "transformer", "weights", "checkpoint", "model"}


def public_name(value: str) -> str:
    """How a model or weights location is recorded in PNG parameters: a Hub id as it is, a local path by its folder
    or file name (with the parent's name when the name alone says nothing, e.g. ``student/linear_attention``), never
    an absolute path, which would leak the user's directories when images are shared."""
    if not value:
        return value
    path = Path(value).expanduser()
    if not (path.is_absolute() or path.exists() or value.startswith((".", "~"))):
        return value  # a Hub id (owner/name[/file]) or a label such as "student"
    path = path.resolve()
    name = path.name
    if path.stem in GENERIC_NAMES and path.parent.name:
        name = f"{path.parent.name}/{name}"
    return name


@dataclass
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    sampler: str = ""
    model: str = ""
    method: str = ""
    weights: str = ""
    version: str = ""

    def validate(self, multiple_of: int = 8) -> "GenerationParams":
        """Raise InvalidArgumentError naming the first parameter outside its range."""
        if not isinstance(self.prompt, str):
            raise InvalidArgumentError(f"prompt must be text; got {type(self.prompt).__name__}")
        for name in ("width", "height"):
            check_side(name, getattr(self, name), multiple_of)
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise InvalidArgumentError(f"steps must be an integer from 1 to {MAX_STEPS}; got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or not 0 <= self.guidance <= 100:
            raise InvalidArgumentError(f"guidance must be a number from 0 to 100; got {self.guidance!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise InvalidArgumentError(f"seed must be an integer from 0 to {MAX_SEED}; got {self.seed!r}")
        return self

    def to_text(self) -> str:
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        values = {"Steps": self.steps, "Sampler": self.sampler, "CFG scale": self.guidance, "Seed": self.seed,
                  "Size": f"{self.width}x{self.height}", "Model": self.model, "Linear attention": self.method,
                  "Linear weights": self.weights, "Version": self.version}
        lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in values.items() if value != ""))
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> "GenerationParams":
        lines = text.split("\n")
        pairs = dict(_parse_pairs(lines[-1])) if len(lines) > 1 else {}
        if not pairs:
            raise InvalidArgumentError("text has no parameter line (Steps: …, Seed: …); it was not written by linfuse")
        body = lines[:-1]
        negative_at = next((i for i, line in enumerate(body) if line.startswith("Negative prompt: ")), len(body))
        negative = "\n".join(body[negative_at:])[len("Negative prompt: "):]
        params = cls(prompt="\n".join(body[:negative_at]), negative_prompt=negative)
        for key, raw in pairs.items():
            if key not in _FIELDS:
                continue
            attribute, kind = _FIELDS[key]
            if attribute == "size":
                params.width, params.height = parse_size(raw)
            else:
                setattr(params, attribute, kind(raw))
        return params


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def _parse_pairs(line: str):
    for match in _PAIR.finditer(line):
        key, value = match.group(1).strip(), match.group(2).strip()
        if not key:
            continue
        yield key, json.loads(value) if value.startswith('"') else value


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H); raise InvalidArgumentError naming the parameter otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not match:
        raise InvalidArgumentError(f"size must look like WIDTHxHEIGHT, e.g. 512x512; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def png_text(params: GenerationParams) -> dict[str, str]:
    """The PNG text chunks of an image made with ``params`` (what :func:`read_png_parameters` reads)."""
    return {PNG_KEY: params.to_text()}


def save_png(image: Image.Image, path: str | os.PathLike, params: GenerationParams) -> Path:
    """Write the image with its parameters in PNG text metadata; atomic (temporary file, then rename)."""
    info = PngImagePlugin.PngInfo()
    for key, value in png_text(params).items():
        info.add_text(key, value)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_png_parameters(path: str | os.PathLike) -> GenerationParams:
    with Image.open(path) as image:
        text = image.text.get(PNG_KEY) if hasattr(image, "text") else None
    if text is None:
        raise InvalidArgumentError(f"{path} has no '{PNG_KEY}' text chunk")
    return GenerationParams.from_text(text)
