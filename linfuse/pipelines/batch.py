"""Batch generation from a prompt file: resumable, atomic, split across processes by accelerate.

A ``.txt`` file holds one prompt per line (blank lines and lines starting with ``#`` are skipped); the seed of the
k-th prompt is ``seed + k``. A ``.jsonl`` file holds one object per line with ``prompt`` and optionally ``seed``,
``width``, ``height``, ``negative_prompt``, ``steps``, ``guidance``; missing fields take the command's defaults.
Every line is checked before any model is loaded; an error names the file, the line and the field.

Job k writes ``OUT/{k:05d}-{seed}.png`` (the generation parameters in its PNG text chunk), under a temporary name
renamed when complete. A job whose file exists is skipped, so a batch that was stopped is finished by running the
same command again, and every image is made exactly once. Under ``accelerate launch`` each process takes a
contiguous share of the jobs (``PartialState.split_between_processes``).
"""

import json
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidArgumentError
from .parameters import GenerationParams

JSON_FIELDS = {"prompt": str, "seed": int, "width": int, "height": int, "negative_prompt": str, "steps": int,
               "guidance": (int, float)}


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
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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


def pending_jobs(jobs: list[GenerationParams], out_dir) -> list[tuple[int, GenerationParams]]:
    """(index, params) of the jobs whose output file does not exist yet."""
    out_dir = Path(out_dir)
    return [(index, params) for index, params in enumerate(jobs) if not (out_dir / output_name(index, params)).exists()]


def run_batch(pipe, jobs: list[GenerationParams], out_dir, *, render, progress: bool = True) -> list[Path]:
    """Generate the pending jobs of this process (all of them outside accelerate); returns the files written.

    ``render(pipe, params)`` makes one PIL image (plain or progressive generation, chosen by the caller).
    """
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .parameters import save_png

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: torchrun on CPUs gives gloo processes
    if state.is_main_process:  # before anyone writes: a temporary file after the barrier is another rank's work
        clear_leftovers(out_dir)
    state.wait_for_everyone()
    todo = pending_jobs(jobs, out_dir)
    written = []
    with state.split_between_processes(todo) as share:
        bar = tqdm(share, desc=f"batch (process {state.process_index})", disable=not progress)
        for index, params in bar:
            image = render(pipe, params)
            written.append(save_png(image, Path(out_dir) / output_name(index, params), params))
    state.wait_for_everyone()
    return written
