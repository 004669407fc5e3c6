"""Batch generation from a prompt file: resumable, atomic, split across processes by accelerate.

A ``.txt`` file holds one prompt per line (blank lines and lines starting with ``#`` are skipped); the seed of the
k-th prompt is ``seed + k``. A ``.jsonl`` file holds one object per line with ``prompt`` and optionally ``seed``,
``width``, ``height``, ``negative_prompt``, ``steps``, ``guidance``; missing fields take the command's defaults.
Every line is checked before any model is loaded; an error names the file, the line and the field.

Job k writes ``OUT/{k:05d}-{seed}.png`` (the generation parameters in its PNG text chunk), under a temporary name
renamed when complete. A job whose file exists and records the job's parameters is skipped, so a batch that was
stopped is finished by running the same command again, and every image is made exactly once; a file made with other
parameters (the line's prompt, the size, steps, guidance, seed, model, method, sampler or weights changed since) is
stale and made again, or refused with ``overwrite=False`` (``--no-overwrite``). ``OUT`` is marked as linfuse's
(:mod:`linfuse.fileio`); an existing folder linfuse did not make is refused unless ``overwrite``. Under ``accelerate
launch`` each process takes a contiguous share of the jobs (``PartialState.split_between_processes``).
"""

import json
import re
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidArgumentError
from ..fileio import check_output_folder, mark_folder, read_text
from .parameters import GenerationParams, read_png_parameters

JSON_FIELDS = {"prompt": str, "seed": int, "width": int, "height": int, "negative_prompt": str, "steps": int,
               "guidance": (int, float)}
IMAGES = "batch images"  # the kind of folder batch makes (its marker)
BATCH_FILE = re.compile(r"\d{5}-\d+\.png|\..+\.png\..+\.tmp")  # what an OUT folder holds (images, leftovers)
ALWAYS_COMPARED = ("prompt", "negative_prompt", "steps", "guidance", "seed")
COMPARED_WHEN_KNOWN = ("width", "height", "sampler", "model", "method", "weights")  # 0 or "" until the model loads


def output_name(index: int, params: GenerationParams) -> str:
    return f"{index:05d}-{params.seed}.png"


def _from_json(line: str, where: str, defaults: GenerationParams, index: int) -> GenerationParams:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{where}: not a JSON object ({exc.msg})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise InvalidArgumentError(f"{where}: each line must be a JSON object with a string 'prompt'")
    unknown = sorted(set(record) - set(JSON_FIELDS))
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown fields {', '.join(unknown)}; allowed: {', '.join(JSON_FIELDS)}")
    for name, value in record.items():
        if isinstance(value, bool) or not isinstance(value, JSON_FIELDS[name]):
            raise InvalidArgumentError(f"{where}: {name} must be of type {JSON_FIELDS[name]}; got {value!r}")
    record.setdefault("seed", defaults.seed + index)
    return replace(defaults, **record)


def read_jobs(path, defaults: GenerationParams, *, multiple_of: int = 8) -> list[GenerationParams]:
    """The jobs of a .txt or .jsonl prompt file, each validated (see the module docstring). A width or height of 0
    (in ``defaults`` when no size was asked for) stands for the model's native size."""
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise InvalidArgumentError(f"prompt file must end in .txt or .jsonl; got {path.name}")
    if not path.is_file():
        raise InvalidArgumentError(f"prompt file {path} does not exist")
    jobs = []
    for number, raw in enumerate(read_text(path, "prompt file").split("\n"), start=1):
        line = raw.strip()
        if not line or (path.suffix == ".txt" and line.startswith("#")):
            continue
        where = f"{path.name} line {number}"
        if path.suffix == ".jsonl":
            params = _from_json(line, where, defaults, len(jobs))
        else:
            params = replace(defaults, prompt=line, seed=defaults.seed + len(jobs))
        try:  # a size of 0 means "the model's native size", filled in once the model is loaded
            replace(params, width=params.width or 8, height=params.height or 8).validate(multiple_of=multiple_of)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{where}: {exc}") from exc
        jobs.append(params)
    if not jobs:
        raise InvalidArgumentError(f"prompt file {path} holds no prompt")
    return jobs


def clear_leftovers(out_dir) -> None:
    """Remove the temporary files that a killed write leaves (``save_png`` writes ``.NAME.png.*.tmp``)."""
    out_dir = Path(out_dir)
    for leftover in out_dir.glob(".*.png.*.tmp") if out_dir.is_dir() else []:
        leftover.unlink(missing_ok=True)


def mismatches(job: GenerationParams, path) -> list[str]:
    """The parameters in which the image at ``path`` differs from ``job`` (the linfuse version is not compared, nor
    the fields ``job`` does not know yet); ``["parameters"]`` when the file records none."""
    try:
        recorded = read_png_parameters(path)
    except (OSError, ValueError):  # not a PNG, truncated, or no linfuse parameters in it
        return ["parameters"]
    known = [name for name in COMPARED_WHEN_KNOWN if getattr(job, name) not in ("", 0)]
    return [name for name in (*ALWAYS_COMPARED, *known) if getattr(recorded, name) != getattr(job, name)]


def stale_jobs(jobs: list[GenerationParams], out_dir) -> dict[int, list[str]]:
    """Index -> differing parameters, for each job whose output file exists but was made with other parameters."""
    out_dir = Path(out_dir)
    paths = {index: out_dir / output_name(index, job) for index, job in enumerate(jobs)}
    found = {index: mismatches(jobs[index], path) for index, path in paths.items() if path.is_file()}
    return {index: names for index, names in found.items() if names}


def check_batch_output(jobs: list[GenerationParams], out_dir, *, overwrite: bool | None = None) -> dict[int, list[str]]:
    """Refuse, before any image is made, an ``out_dir`` that exists and linfuse did not make (unless ``overwrite``)
    and, with ``overwrite=False``, stale images (see the module docstring); returns the stale jobs. Called before the
    model loads (comparing what the prompt file says) and again once the jobs hold the model's fields."""
    check_output_folder(out_dir, what="--out", kind=IMAGES, overwrite=bool(overwrite), own_names=BATCH_FILE.fullmatch)
    stale = stale_jobs(jobs, out_dir)
    if stale and overwrite is False:
        index, names = next(iter(stale.items()))
        raise InvalidArgumentError(
            f"--no-overwrite: {len(stale)} finished image(s) in {out_dir} were made with other parameters than the "
            f"prompt file asks now, e.g. {output_name(index, jobs[index])} ({', '.join(names)} differ); run without "
            "--no-overwrite to make them again, or choose another --out")
    return stale


def pending_jobs(jobs: list[GenerationParams], out_dir,
                 stale: dict | None = None) -> list[tuple[int, GenerationParams]]:
    """(index, params) of the jobs whose output file does not exist yet or is stale (``stale``: from
    :func:`stale_jobs`, found again when not given)."""
    out_dir = Path(out_dir)
    stale = stale_jobs(jobs, out_dir) if stale is None else stale
    return [(index, params) for index, params in enumerate(jobs)
            if index in stale or not (out_dir / output_name(index, params)).exists()]


def run_batch(pipe, jobs: list[GenerationParams], out_dir, *, render, progress: bool = True,
              overwrite: bool | None = None) -> list[Path]:
    """Generate the pending jobs of this process (all of them outside accelerate); returns the files written.

    ``render(pipe, params)`` makes one PIL image (plain or progressive generation, chosen by the caller).
    ``overwrite``: see :func:`check_batch_output` (None: stale images are made again, a foreign folder refused).
    """
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .parameters import save_png

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: torchrun on CPUs gives gloo processes
    # every process checks the folder and lists its work before the first one marks the folder or writes an image
    todo = pending_jobs(jobs, out_dir, check_batch_output(jobs, out_dir, overwrite=overwrite))
    state.wait_for_everyone()
    if state.is_main_process:  # before anyone writes: a temporary file after the barrier is another rank's work
        mark_folder(out_dir, "batch", IMAGES)
        clear_leftovers(out_dir)
    state.wait_for_everyone()
    written = []
    with state.split_between_processes(todo) as share:
        bar = tqdm(share, desc=f"batch (process {state.process_index})", disable=not progress)
        for index, params in bar:
            image = render(pipe, params)
            written.append(save_png(image, Path(out_dir) / output_name(index, params), params))
    state.wait_for_everyone()
    return written
