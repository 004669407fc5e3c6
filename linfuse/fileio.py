"""File helpers shared by every part of linfuse that writes results, reads text or resolves model locations.

What linfuse never does: delete or replace a folder it did not make. Every folder it creates holds a marker file,
``.linfuse-output`` (JSON: the command that wrote it, the kind of folder, the linfuse version); a folder that exists
without the marker of the kind being written is written into or replaced only when the caller says so
(``--overwrite``), and a replaced folder is removed only once the new one is in place.
"""

import json
import os
import secrets
import shutil
from pathlib import Path

from .errors import InvalidArgumentError

MARKER = ".linfuse-output"


def _temporary_file(folder: Path, name: str) -> Path:
    """A new empty file ``folder/.NAME.<random>.tmp`` created with mode 0o666 less the umask, as ``open`` would
    (``tempfile.mkstemp`` makes 0o600 files, which the rename would hand on to the result)."""
    for _ in range(100):
        path = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a temporary file beside {folder / name}")


def atomic_write(target: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``target``.

    Readers see either the old file or the complete new one, never a partial write; on failure the temporary file
    is removed and ``target`` is untouched. The parent directory is created if needed; the file gets the mode the
    umask gives new files (0o644 under umask 022).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_file(target.parent, target.name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped). A file that is not UTF-8 is refused with the
    line of its first bad byte, an unreadable one with the reason: ``what`` names the file in the message."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # exc.object is the data after the BOM, exc.start an offset into it
        line = exc.object[:exc.start].count(b"\n") + 1
        column = exc.start - (exc.object.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidArgumentError(f"{what} {path} line {line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}"
                                   f" at column {column}); save the file as UTF-8") from None


def mark_folder(folder: str | os.PathLike, made_by: str, kind: str) -> None:
    """Write the marker that says linfuse made ``folder``: ``made_by`` the command (e.g. "distill"), ``kind`` what
    the folder is ("pipeline", "run", "images", ...), so that a command replaces only folders of its own kind."""
    from . import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"made_by": f"linfuse {made_by}", "kind": kind, "version": __version__}) + "\n"
    (folder / MARKER).write_text(text)


def folder_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder linfuse made (made_by, kind, version), or None."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_folder(folder: str | os.PathLike, *, what: str, kind: str, overwrite: bool = False,
                        replaces: bool = False, own_names=None, inputs: tuple = ()) -> None:
    """Refuse (InvalidArgumentError) to write ``folder`` when it exists and linfuse did not make it as a ``kind``.

    Accepted: a folder that does not exist, an empty one, one with linfuse's marker for ``kind``, one whose every entry
    ``own_names(name)`` says linfuse writes there (output of linfuse versions before the marker), or any folder under
    ``overwrite``. ``replaces``: the write puts a new folder in its place (its contents go), otherwise files are added
    beside what is there. A folder to be replaced must not hold any of ``inputs`` (the model it is made from, the run
    folder) nor the working directory, whatever ``overwrite`` says. ``what`` names the folder in the message.
    """
    folder = Path(folder)
    if replaces:
        _check_holds_none(folder, what, inputs)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InvalidArgumentError(f"{what} {folder} is a file, not a folder; choose another path")
    marker = folder_marker(folder)
    if overwrite or (marker or {}).get("kind") == kind:
        return
    entries = [entry.name for entry in folder.iterdir()]
    if not entries or (marker is None and own_names is not None and all(own_names(name) for name in entries)):
        return
    made = (f"was made by {marker.get('made_by', 'linfuse')} for {marker.get('kind')}, not for {kind}" if marker
            else f"was not made by linfuse (no {MARKER} file)")
    effect = ("replace it (what it holds is deleted once the new folder is in place)" if replaces else
              "write into it anyway (files of the names linfuse writes are replaced, nothing else is touched)")
    raise InvalidArgumentError(f"{what} {folder} exists and {made}; it holds {_listing(folder)}; choose a new or "
                               f"empty folder, or pass --overwrite to {effect}")


def _check_holds_none(folder: Path, what: str, inputs: tuple) -> None:
    resolved = folder.expanduser().resolve()
    for name, path in (("the working directory", Path.cwd()), *inputs):
        inside = Path(path).expanduser().resolve()
        if inside == resolved or resolved in inside.parents:
            raise InvalidArgumentError(f"{what} {folder} holds {name} ({path}); replacing it would delete that: "
                                       "choose a folder of its own")


def atomic_folder(target: str | os.PathLike, write, *, made_by: str, kind: str, overwrite: bool = False) -> Path:
    """Call ``write(temporary_folder)``, then put that folder in place of ``target``.

    The new folder is written beside the target (``.NAME.linfuse-tmp``) and marked as linfuse's; the target, if any,
    is renamed aside (``.NAME.linfuse-old``), the new folder renamed into place, and only then the old one removed.
    A crash leaves the old folder or the new one (a crash between the two renames is undone by the next call).
    A target linfuse did not make as a ``kind`` folder is refused unless ``overwrite`` (:func:`check_output_folder`).
    """
    target = Path(target)
    check_output_folder(target, what="folder", kind=kind, overwrite=overwrite, replaces=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary, old = (target.with_name(f".{target.name}.linfuse-{kind}") for kind in ("tmp", "old"))
    if old.exists() and not target.exists():
        old.rename(target)  # an earlier call stopped between its two renames: the old folder is still the current one
    _remove(old)
    _remove(temporary)
    temporary.mkdir()
    write(temporary)
    mark_folder(temporary, made_by, kind)
    if target.exists() or target.is_symlink():
        target.rename(old)
    temporary.rename(target)
    _remove(old)
    return target


def _remove(path: Path) -> None:
    """Remove a folder of linfuse's own (a link to one: the link only)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def looks_like_hub_id(text: str) -> bool:
    """True for 'owner/name' strings that are not filesystem-looking paths."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and all(text.split("/"))


def write_safetensors(target: str | os.PathLike, tensors: dict, metadata: dict) -> Path:
    """Write ``tensors`` as safetensors atomically; metadata values that are not text are stored as JSON."""
    from safetensors.torch import save_file

    text = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    return atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=text))
