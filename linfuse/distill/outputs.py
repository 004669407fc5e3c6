"""Where the training commands write, checked before anything loads: the run folder (``output_dir``: checkpoints,
logs, caches) and the exported pipeline folder (``export``). See :func:`linfuse.fileio.check_output_folder`."""

from pathlib import Path

from ..fileio import check_output_folder, folder_marker, mark_folder

PIPELINE = "a pipeline"
RUN = "a training run"
# what a run folder of linfuse before the marker held: a folder of only these names is an earlier run's
RUN_NAMES = frozenset({"loss_log.jsonl", "checkpoints", "linear_attention", "lora", "teacher_samples", "vae",
                       "vae-train", "unet-train", "transformer-train"})


def check_destinations(command: str, output_dir, export, *, overwrite: bool, inputs: dict) -> None:
    """Refuse an ``output_dir`` or ``export`` folder that exists and linfuse did not make as such, unless
    ``overwrite``; an export must not hold ``output_dir``, the working directory or any of ``inputs`` (name -> path,
    e.g. the teacher model) whatever ``overwrite`` says. Then ``output_dir`` is marked as this command's run."""
    check_output_folder(output_dir, what="output_dir", kind=RUN, overwrite=overwrite,
                        own_names=RUN_NAMES.__contains__)
    if export:
        named = (("output_dir", output_dir), *((name, path) for name, path in inputs.items() if path))
        check_output_folder(export, what="export", kind=PIPELINE, overwrite=overwrite, replaces=True, inputs=named)
    if (folder_marker(output_dir) or {}).get("kind") != RUN:
        mark_folder(Path(output_dir), command, RUN)
