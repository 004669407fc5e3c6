"""File helpers shared by every part of linfuse that writes results or resolves model locations."""

import os
import tempfile
from pathlib import Path


def atomic_write(target: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``target``.

    Readers see either the old file or the complete new one, never a partial write; on failure the temporary file
    is removed and ``target`` is untouched. The parent directory is created if needed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_folder(target: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_folder)``, then put that folder in place of ``target``: readers never see a half-written
    folder (a crash leaves the old one, or none, plus a ``.tmp`` sibling that the next call clears)."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    write(temporary)
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)
    return target


def looks_like_hub_id(text: str) -> bool:
    """True for 'owner/name' strings that are not filesystem-looking paths."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and all(text.split("/"))


def write_safetensors(target: str | os.PathLike, tensors: dict, metadata: dict) -> Path:
    """Write ``tensors`` as safetensors atomically; metadata values that are not text are stored as JSON."""
    import json

    from safetensors.torch import save_file

    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    return atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=text))
