"""``linfuse upscale``, ``linfuse img2img``, ``linfuse train-sr`` and ``linfuse train-classifier``."""

import dataclasses
from pathlib import Path

from .errors import InvalidArgumentError


def add_companion_commands(commands) -> None:
    from .companions.sr.zoo import SR_MODELS

    upscale = commands.add_parser("upscale", help="super-resolve a picture ×2 or ×4 with an SR companion (tiled)")
    upscale.add_argument("image", help="input picture (PNG, JPEG, …)")
    upscale.add_argument("--scale", type=int, default=4, help="2 or 4")
    upscale.add_argument("--model", default="sesr-m5", help=f"one of {', '.join(SR_MODELS)}")
    upscale.add_argument("--weights", default=None, help="weights file (default: the bundled one)")
    upscale.add_argument("--tile", type=int, default=256, help="input pixels per tile side (memory vs overhead)")
    upscale.add_argument("--out", default=None, help="output PNG (default: <image>-x<scale>.png)")
    upscale.add_argument("--device", default="cpu")
    upscale.set_defaults(run=run_upscale)

    add_img2img_command(commands)
    add_train_sr_command(commands)
    add_train_classifier_command(commands)


def add_img2img_command(commands) -> None:
    from .cli_common import add_model_arguments

    img2img = commands.add_parser("img2img", help="image to image (SDEdit) at any size with a linearized model")
    img2img.add_argument("image", help="input picture")
    img2img.add_argument("prompt")
    img2img.add_argument("--strength", type=float, default=0.5,
                         help="in (0, 1]: how much to change (0.2 retouches, 0.8 keeps mostly the colours)")
    add_model_arguments(img2img)
    img2img.add_argument("--out", default="img2img.png", help="output PNG path (written atomically)")
    img2img.set_defaults(run=run_img2img)


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise InvalidArgumentError(f"image {path} does not exist")
    try:
        return Image.open(path).convert("RGB")
    except UnidentifiedImageError as exc:
        raise InvalidArgumentError(f"image {path} is not a picture PIL can read") from exc


def run_upscale(args) -> int:
    from .companions.sr import load_sr, upscale_image
    from .companions.sr.zoo import check_model
    from .fileio import atomic_write

    check_model(args.model, args.scale)
    if args.tile < 16:
        raise InvalidArgumentError(f"--tile must be >= 16; got {args.tile}")
    image = _open_image(args.image)
    model = load_sr(args.model, args.scale, path=args.weights, device=args.device)
    result = upscale_image(image, model, tile=args.tile, progress=True)
    out = Path(args.out or Path(args.image).with_name(f"{Path(args.image).stem}-x{args.scale}.png"))
    atomic_write(out, lambda tmp: result.save(tmp, format="PNG"))
    print(f"wrote {out} ({result.width}x{result.height}, {args.model} ×{args.scale})")
    return 0


def run_img2img(args) -> int:
    from .cli_common import default_params, load_model, resolve_method
    from .pipelines import describe_run, save_png
    from .pipelines.highres import HighResOptions
    from .pipelines.img2img import check_steps, check_strength, img2img

    check_strength(args.strength)
    params = default_params(args, args.prompt)
    check_steps(params.steps, args.strength)  # before loading anything, as img2img would refuse them
    image = _open_image(args.image)
    method, weights = resolve_method(args)
    pipe = load_model(args, method, weights)
    describe_run(pipe, params, model=args.model or "student", weights=str(weights or ""))
    size = (params.width, params.height) if args.size else None
    result = img2img(pipe, image, params, strength=args.strength, size=size,
                     options=HighResOptions(memory=args.memory_mode, memory_limit=getattr(args, "memory_limit", None)))
    path = save_png(result, args.out, params)
    print(f"wrote {path} ({result.width}x{result.height}, strength {args.strength:g})")
    return 0


def _add_config_arguments(parser, defaults, choices: dict[str, tuple]) -> None:
    """One ``--field`` option per field of a training config dataclass, typed and defaulted from ``defaults``."""
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        extra = {"help": f"one of {', '.join(map(str, choices[field.name]))}"} if field.name in choices else {}
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value, **extra)


def _config_from(args, config_class):
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}).validate()


def add_train_sr_command(commands) -> None:
    from .companions.sr.train import SRTrainConfig
    from .companions.sr.zoo import SR_MODELS, SR_SCALES

    train = commands.add_parser("train-sr", help="train an SR companion (ESPCN / SESR) on package pictures")
    _add_config_arguments(train, SRTrainConfig(), {"model": SR_MODELS, "scale": SR_SCALES})
    train.add_argument("--out", default=None, help="weights file (default: the bundled assets/sr/<model>-x<scale>)")
    train.set_defaults(run=run_train_sr)


def run_train_sr(args) -> int:
    from .companions.sr.train import SRTrainConfig, train_sr

    print(f"wrote {train_sr(_config_from(args, SRTrainConfig), out=args.out)}")
    return 0


def add_train_classifier_command(commands) -> None:
    from .companions.classify.train import ClassifierTrainConfig
    from .companions.classify.zoo import CLASSIFIERS

    train = commands.add_parser("train-classifier", help="train an emoji classifier (scores generated images)")
    _add_config_arguments(train, ClassifierTrainConfig(), {"model": CLASSIFIERS})
    train.add_argument("--out", default=None, help="weights file (default: the bundled assets/classify/<model>)")
    train.set_defaults(run=run_train_classifier)


def run_train_classifier(args) -> int:
    from .companions.classify.train import ClassifierTrainConfig, train_classifier

    path, score = train_classifier(_config_from(args, ClassifierTrainConfig), out=args.out)
    print(f"wrote {path} (validation top-1 {score:.1%})")
    return 0
