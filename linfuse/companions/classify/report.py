"""The classifier part of ``linfuse eval``: every bundled classifier scores the pictures two models made from the
same prompts and seeds (see :mod:`.scores` for the formulas)."""

from .scores import score_models
from .zoo import CLASSIFIERS, load_classifier, weights_path


def classifier_report(class_names: list[str], intended: list[int], generated: dict[str, list], reference: list,
                      classifiers=CLASSIFIERS) -> dict:
    """{classifier: scores} for every classifier whose weights exist and whose classes match ``class_names``."""
    report = {}
    for name in classifiers:
        if not weights_path(name).is_file():
            report[name] = {"skipped": f"no weights at {weights_path(name)}"}
            continue
        model, names = load_classifier(name)
        if names != class_names:
            report[name] = {"skipped": "trained on other classes than these prompts name"}
            continue
        report[name] = score_models(model, names, intended, generated, reference)
    return report


def format_report(report: dict) -> list[str]:
    lines = [f"{'classifier':12s} {'model':8s} {'prompt accuracy':>15s} {'Fréchet to renders':>19s}"]
    for name, scores in report.items():
        if "skipped" in scores:
            lines.append(f"{name:12s} skipped: {scores['skipped']}")
            continue
        for model, entry in scores["models"].items():
            lines.append(f"{name:12s} {model:8s} {entry['prompt_accuracy']:15.1%} "
                         f"{entry.get('frechet_to_renders', float('nan')):19.3f}")
        for pair, entry in scores["pairs"].items():
            first, second = pair.split("|")
            lines.append(f"{name:12s} {second} vs {first}: agreement {entry['agreement']:.1%}, Fréchet distance "
                         f"{entry['frechet']:.3f} (chance accuracy {scores['chance']:.1%})")
    return lines
