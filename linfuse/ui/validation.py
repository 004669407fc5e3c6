"""Checking what the web UI (or a gradio_client caller) sends, with messages that name the parameter and its range.

Everything here raises :class:`InvalidArgumentError` (linfuse's own error); :func:`shown_to_people` turns that, and
every other error linfuse raises on purpose, into a ``gr.Error`` whose text the browser and ``gradio_client`` show.
"""

import functools
import logging
import math
import re
from pathlib import Path

from ..errors import InvalidArgumentError, LinfuseError
from ..fileio import looks_like_hub_id
from ..linearize import method_names
from ..pipelines import GenerationParams, HighResOptions
from ..pipelines.loading import BUNDLED_MODELS
from ..pipelines.parameters import check_side

LOG = logging.getLogger("linfuse.ui")
BUNDLED = tuple(BUNDLED_MODELS)  # the names load_pipeline knows
SPECIAL_METHODS = ("auto", "none")


def method_choices() -> list[str]:
    """What the method dropdown offers: 'auto' (none for the bundled teacher, linfusion otherwise), 'none' (softmax),
    then every registered linearisation method."""
    return [*SPECIAL_METHODS, *method_names()]


def as_int(name: str, value) -> int:
    """A whole number from a form field (gradio sends numbers as int or float; None when the field is empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidArgumentError(f"{name} is empty; enter a whole number")
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a whole number; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a whole number; got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InvalidArgumentError(f"{name} must be a whole number; got {value!r}")
    return int(number)


def as_float(name: str, value) -> float:
    if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a number; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{name} must be a finite number; got {value!r}")
    return number


def whole_number_in(name: str, value, low: int, high: int, meaning: str = "") -> int:
    """A whole number from ``low`` to ``high``; ``meaning`` (e.g. "input pixels per tile") completes the message."""
    number = as_int(name, value)
    if not low <= number <= high:
        raise InvalidArgumentError(f"{name} must be a whole number from {low} to {high}"
                                   f"{f' ({meaning})' if meaning else ''}; got {number}")
    return number


def check_choice(name: str, value, choices) -> object:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_image(image, name: str = "image"):
    """An uploaded picture (gradio gives a PIL image, or None when nothing was uploaded), as RGB."""
    from PIL import Image

    if image is None:
        raise InvalidArgumentError(f"{name} is empty; upload a picture")
    if not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"{name} must be a picture; got {type(image).__name__}")
    return image.convert("RGB")


def unreadable_picture(name: str, exc: BaseException) -> str:
    """The message for an upload that PIL cannot decode."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return f"{name} is too large to decode safely ({exc}); upload a smaller picture"
    reason = "it is cut short (truncated)" if "truncated" in str(exc) else \
        "it is not a picture file PIL can read (PNG, JPEG, WebP, …)" if isinstance(exc, Image.UnidentifiedImageError) \
        else f"{type(exc).__name__}: {exc}"
    return f"{name} could not be read: {reason}; upload the picture again or re-save it"


def check_size(width, height) -> tuple[int, int]:
    """(width, height) as integers, each a multiple of 8 from 8 to 16384."""
    return check_side("width", as_int("width", width)), check_side("height", as_int("height", height))


def check_params(prompt, negative, width, height, steps, guidance, seed) -> GenerationParams:
    """The generation parameters of a form, validated by :meth:`GenerationParams.validate`."""
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidArgumentError(f"prompt must be text; got {type(prompt).__name__}")
    if negative is not None and not isinstance(negative, str):
        raise InvalidArgumentError(f"negative prompt must be text; got {type(negative).__name__}")
    width, height = check_size(width, height)
    params = GenerationParams(prompt=prompt or "", negative_prompt=negative or "", width=width, height=height,
                              steps=as_int("steps", steps), guidance=as_float("guidance", guidance),
                              seed=as_int("seed", seed))
    return params.validate(multiple_of=8)


def check_model(model) -> str:
    """A bundled model's name (``BUNDLED``), an existing pipeline folder, or a Hub id like owner/name."""
    text = (model or "").strip() if isinstance(model, str) else model
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"model is empty; use one of {', '.join(BUNDLED)} (the bundled models), a local "
                                   "diffusers pipeline folder, or a Hub id like owner/name")
    if text in BUNDLED or looks_like_hub_id(text):
        return text
    path = Path(text).expanduser()
    if not path.is_dir():
        raise InvalidArgumentError(f"model {text!r} is not a folder on this machine, nor a Hub id like owner/name, "
                                   f"nor one of {', '.join(BUNDLED)}")
    if not (path / "model_index.json").exists():
        raise InvalidArgumentError(f"model folder {text!r} has no model_index.json; point it at a diffusers "
                                   "pipeline folder (the one that holds unet/, vae/, …)")
    return str(path)


def check_method(method) -> str:
    return check_choice("method", method, method_choices())


def parse_strengths(text) -> tuple[float, ...] | None:
    """'0.4, 0.25, 0.1' -> (0.4, 0.25, 0.1); empty -> None (the default schedule, 0.4 down to 0.1)."""
    if text is None or not str(text).strip():
        return None
    parts = [part for part in re.split(r"[,\s;]+", str(text).strip()) if part]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise InvalidArgumentError(f"strengths must be numbers between 0 and 1 separated by commas, e.g. "
                                   f"'0.4, 0.1'; got {text!r}") from None
    return values  # their range and count are checked where the stages are planned (plan_stages)


def check_highres(upscale, strengths, skip_residual, memory: str = "auto", ntk_factor=1.0,
                  proportional_attention: bool = False) -> HighResOptions:
    """The options, checked by :meth:`HighResOptions.validate` (strengths by the stage plan; NTK and proportional
    attention against the model by the job)."""
    return HighResOptions(upscale=upscale, strengths=parse_strengths(strengths),
                          skip_residual=as_float("skip_residual", skip_residual), memory=memory,
                          ntk_factor=as_float("ntk_factor", ntk_factor),
                          proportional_attention=bool(proportional_attention)).validate()


def people_message(exc: BaseException) -> str:
    """The text to show for an error: linfuse's own messages as they are, others with their type."""
    if isinstance(exc, LinfuseError):
        return str(exc)
    if "out of memory" in str(exc).lower():
        return f"out of memory: {exc}. Use a smaller size, fewer models loaded, or a linearized model."
    return f"{type(exc).__name__}: {exc}"


def refused(message: str, where: str = "input"):
    """A ``gr.Error`` for a request linfuse refuses on purpose: the server log gets one line, not a traceback."""
    import gradio as gr

    LOG.warning("refused %s: %s", where, message)
    return gr.Error(message, title="linfuse", print_exception=False)


def shown_to_people(fn):
    """Decorator for event handlers: errors become ``gr.Error`` with a readable message (and the request fails).
    linfuse's own refusals (bad inputs, a job that does not fit) log one line; other errors keep their traceback."""
    import gradio as gr

    where = f"{fn.__module__.rsplit('.', 1)[-1].removesuffix('_tab')} request"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LinfuseError as exc:
            raise refused(people_message(exc), where) from exc
        except (ValueError, OSError, RuntimeError) as exc:
            raise gr.Error(people_message(exc), title="linfuse") from exc

    return wrapper
