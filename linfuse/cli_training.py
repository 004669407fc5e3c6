"""``linfuse distill``, ``linfuse train-teacher`` and ``linfuse eval``."""

import argparse
from pathlib import Path

from .errors import InvalidArgumentError
from .fileio import atomic_write, check_output_folder, mark_folder

EVALUATION = "an evaluation"
EVAL_FILES = frozenset({"scores.jsonl", "sheet.png", "classify.json"})  # what --out of linfuse eval holds


def add_training_commands(commands) -> None:
    distill = commands.add_parser("distill", help="distill linear attention from a teacher (YAML config)")
    distill.add_argument("config", help="YAML config; see assets/configs/distill.yaml")
    add_overwrite_argument(distill, "its output_dir or export folder")
    distill.set_defaults(run=run_distill)

    teacher = commands.add_parser("train-teacher", help="train a small text-to-image teacher from scratch (YAML)")
    teacher.add_argument("config", help="YAML config: assets/configs/teacher.yaml (UNet), dit-teacher.yaml (DiT)")
    add_overwrite_argument(teacher, "its output_dir or export folder")
    teacher.set_defaults(run=run_train_teacher)

    evaluate = commands.add_parser("eval", help="student vs teacher: per-pair PSNR and latent distance")
    evaluate.add_argument("--student", default="student", help="student pipeline (default: the bundled one)")
    evaluate.add_argument("--student-weights", default="auto",
                          help="'auto' (the student folder's linear_attention/), a weights folder, or 'none' for "
                               "the un-distilled conversion (teacher projections, mixers at zero)")
    evaluate.add_argument("--teacher", default="teacher", help="teacher pipeline (default: the bundled one)")
    evaluate.add_argument("--prompts", default=None, help="prompt file, one per line (default: "
                                                          "assets/configs/eval_prompts.txt)")
    evaluate.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--guidance", type=float, default=5.0)
    evaluate.add_argument("--out", default="eval", help="folder for scores.jsonl and sheet.png")
    add_overwrite_argument(evaluate, "--out")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--classify", action=argparse.BooleanOptionalAction, default=None,
                          help="also generate one image per glyph with each model and score them with the bundled "
                               "classifiers (prompt accuracy, student-teacher agreement, Fréchet distance on "
                               "classifier features) and the nearest-template rule (default: on for the bundled "
                               "UNet teacher, whose domain and 64 px size the classifiers know)")
    evaluate.set_defaults(run=run_eval)


def add_overwrite_argument(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace or write into {what} even when it exists and linfuse did not make it (without "
                             "it such a folder is refused before any work)")


def run_distill(args) -> int:
    from .distill.recipe import distill, load_distill_config

    out = distill(load_distill_config(args.config), overwrite=args.overwrite)
    print(f"wrote linear-attention weights to {out}")
    return 0


def run_train_teacher(args) -> int:
    from .distill.config import read_yaml

    mapping = read_yaml(args.config)
    if "family" in mapping:  # a DiT teacher (assets/configs/dit-teacher.yaml)
        from .distill.dit_teacher import load_dit_teacher_config, train_flux_teacher

        out = train_flux_teacher(load_dit_teacher_config(mapping), overwrite=args.overwrite)
    else:
        from .distill.teacher import load_teacher_config, train_teacher

        out = train_teacher(load_teacher_config(args.config), overwrite=args.overwrite)
    print(f"wrote teacher pipeline to {out}")
    return 0


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidArgumentError(f"--seeds must be comma-separated integers like 0,1,2; got {text!r}") from exc
    if not seeds or any(s < 0 for s in seeds):
        raise InvalidArgumentError(f"--seeds must list at least one integer >= 0; got {text!r}")
    return seeds


def run_eval(args) -> int:
    from .cli_checks import check_writable_folder
    from .distill.evaluate import compare, read_prompts, sample_sheet, summarize, write_report
    from .pipelines import load_pipeline
    from .pipelines.families import family
    from .pipelines.loading import is_bundled_teacher, resolve_model, resolve_weights

    seeds = parse_seeds(args.seeds)
    check_writable_folder(args.out)
    prompts = read_prompts(args.prompts)
    if args.steps < 1:
        raise InvalidArgumentError(f"--steps must be >= 1; got {args.steps}")
    check_output_folder(args.out, what="--out", kind=EVALUATION, overwrite=args.overwrite,
                        own_names=EVAL_FILES.__contains__)
    student_model = resolve_model(args.student)
    weights = resolve_weights(args.student_weights, student_model)
    # the family's own conversion (linfusion for UNets, clear for DiTs), even for a bundled teacher as student
    student = load_pipeline(student_model, method="auto", weights=weights, device=args.device, dtype="fp32")
    teacher = load_pipeline(resolve_model(args.teacher), method=None, device=args.device, dtype="fp32")
    scores, images = compare(student, teacher, prompts, seeds, steps=args.steps, guidance=args.guidance)
    out = Path(args.out)
    mark_folder(out, "eval", EVALUATION)
    write_report(scores, out / "scores.jsonl")
    per_prompt = [images[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]
    sheet = sample_sheet([[t for _, t in pairs] + [s for s, _ in pairs] for pairs in per_prompt], prompts)
    atomic_write(out / "sheet.png", lambda tmp: sheet.save(tmp, format="PNG"))
    for score in scores:
        print(f"{score.psnr:6.2f} dB  {score.latent_distance:.4f}  seed {score.seed}  {score.prompt}")
    summary = summarize(scores)
    print(f"mean PSNR {summary['mean_psnr']:.2f} dB, mean latent distance {summary['mean_latent_distance']:.4f} "
          f"over {summary['pairs']} pairs; wrote {out / 'scores.jsonl'} and {out / 'sheet.png'} "
          "(each row: teacher images, then student images)")
    if args.classify or (args.classify is None and is_bundled_teacher(args.teacher) and family(teacher) == "unet"):
        report_classification(student, teacher, args, out)
    return 0


def report_classification(student, teacher, args, out: Path) -> None:
    """Template accuracy and the bundled classifiers' scores on one picture per glyph from each model."""
    import json

    from .companions.classify.report import classifier_report, format_report
    from .distill.data import DataConfig
    from .distill.emoji import EmojiSource
    from .distill.evaluate import glyph_pictures, template_accuracy
    from .pipelines import native_size

    source = EmojiSource(DataConfig(resolution=native_size(teacher)[0]).composition())
    generated = {}
    for name, pipe in (("teacher", teacher), ("student", student)):
        prompts, generated[name] = glyph_pictures(pipe, source, steps=args.steps, guidance=args.guidance)
    reference = [source.render(index, background) for index, background, _ in prompts]
    results = {"template": {name: template_accuracy(source, prompts, pictures) for name, pictures in generated.items()},
               "classifiers": classifier_report(source.names, [index for index, _, _ in prompts], generated,
                                                reference)}
    atomic_write(out / "classify.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    for name, result in results["template"].items():
        print(f"{name}: template top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%} over {result['prompts']} "
              f"prompts (chance {result['chance_top1']:.1%})")
    print("\n".join(format_report(results["classifiers"])))
