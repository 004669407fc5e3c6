"""Checks the command line makes before it loads a model: where results go, what pictures come in, and what the
``LINFUSE_*`` environment variables say. Each failure is one :class:`~linfuse.errors.InvalidArgumentError` that names
the parameter (``--out``, ``image``, ``$LINFUSE_MODEL``) and what to do, so a bad input costs no model load.

Writability is probed, not inferred from permission bits: the nearest existing folder gets a temporary file that is
removed at once. That is the only test that holds for root, read-only mounts and pseudo filesystems like /proc.
"""

import os
import tempfile
from pathlib import Path

from .errors import InvalidArgumentError

PICTURE_SUFFIXES = (".png",)  # linfuse writes PNG only: its parameters live in a PNG text chunk


def check_output_file(path, parameter: str = "--out", suffixes: tuple[str, ...] = PICTURE_SUFFIXES) -> Path:
    """``path`` can be written as a new or replaced file of one of ``suffixes``; returns it as a Path."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise InvalidArgumentError(f"{parameter} {path} is a folder; give a file name inside it, e.g. "
                                   f"{target / ('linfuse' + suffixes[0])}")
    if target.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{parameter} {path}: linfuse writes {' or '.join(suffixes)} files only; name the "
                                   f"file with {suffixes[0]}, e.g. {target.with_suffix(suffixes[0]).name}")
    if target.exists() and not target.is_file():
        raise InvalidArgumentError(f"{parameter} {path} exists and is not a regular file; choose another name")
    _probe_writable(target.parent, parameter, path)
    return target


def check_writable_folder(path, parameter: str = "--out") -> Path:
    """``path`` is an existing writable folder or can be made as one; returns it as a Path."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(f"{parameter} {path} is a file, not a folder; choose a folder name")
    _probe_writable(folder, parameter, path)
    return folder


def _probe_writable(folder: Path, parameter: str, given) -> None:
    """The nearest existing ancestor of ``folder`` is a folder that accepts a new file (probed)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidArgumentError(f"{parameter} {given}: {existing} is a file, so no folder can be made under it; "
                                   "choose a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".linfuse-probe.", suffix=".tmp")
    except OSError as exc:
        raise InvalidArgumentError(f"{parameter} {given}: cannot write in {existing} ({exc.strerror or exc}); "
                                   "choose a folder you can write to") from exc
    os.close(fd)
    os.unlink(probe)


def open_picture(path, parameter: str = "image"):
    """The picture at ``path`` fully decoded as RGB; a missing, unreadable, truncated or non-picture file is refused
    (decoding it all here, not lazily later, is what finds a truncated file before the model loads)."""
    from PIL import Image

    source = Path(path).expanduser()
    if not source.is_file():
        raise InvalidArgumentError(f"{parameter} {path} does not exist or is not a file; pass a PNG or JPEG picture")
    try:
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgumentError(f"{parameter} {path}: truncated or not a picture ({exc}); pass a complete PNG or "
                                   "JPEG file") from exc


def environment_model() -> str | None:
    """``$LINFUSE_MODEL`` when set and not empty (the --model default)."""
    return os.environ.get("LINFUSE_MODEL") or None


def check_environment() -> None:
    """The ``LINFUSE_*`` variables the kernels read hold known values; the message names the variable."""
    from .kernels.autoconfig import AUTOTUNE_ENV
    from .kernels.dispatch import resolve_backend
    from .kernels.linear_attention import BACKEND_ENV as LINEAR_BACKEND_ENV
    from .kernels.local_attention import BACKEND_ENV as LOCAL_BACKEND_ENV

    for name in (LINEAR_BACKEND_ENV, LOCAL_BACKEND_ENV):
        if name in os.environ:
            try:
                resolve_backend(None, name)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"${exc}; fix or unset the environment variable") from exc
    if os.environ.get(AUTOTUNE_ENV, "") not in ("", "0", "1"):
        raise InvalidArgumentError(f"${AUTOTUNE_ENV} must be 1 (autotune) or 0 (off); got "
                                   f"{os.environ[AUTOTUNE_ENV]!r}; fix or unset the environment variable")
