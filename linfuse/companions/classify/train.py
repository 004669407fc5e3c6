"""Training the classifiers on labelled emoji renders (see :mod:`.data`): AdamW, cosine decay, the model's own
loss (squared hinge for the SVM heads, label-smoothed cross-entropy for MobileNetV2)."""

import math
import sys
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ...errors import InvalidArgumentError
from .data import emoji_source, labelled_set
from .vae_features import FeatureSVM
from .zoo import build_classifier, check_name, save_classifier, weights_path


@dataclass
class ClassifierTrainConfig:
    model: str = "cnn-svm"
    samples: int = 144 * 40
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def validate(self) -> "ClassifierTrainConfig":
        check_name(self.model)
        for name, low in (("samples", 1), ("steps", 1), ("batch", 1)):
            if getattr(self, name) < low:
                raise InvalidArgumentError(f"{name} must be >= {low}; got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise InvalidArgumentError(f"lr must be in (0, 1]; got {self.lr}")
        return self


@torch.no_grad()
def accuracy(model: torch.nn.Module, pictures: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    predictions = torch.cat([model(pictures[i:i + batch]).argmax(dim=1) for i in range(0, len(pictures), batch)])
    return float((predictions == labels).float().mean())


def train_classifier(config: ClassifierTrainConfig, out=None, progress: bool = True) -> tuple:
    """Train from scratch; returns (weights path, validation accuracy)."""
    config.validate()
    torch.manual_seed(config.seed)
    source = emoji_source()
    pictures, labels = labelled_set(config.samples, source=source)
    model = build_classifier(config.model, len(source.catalogue))
    if isinstance(model, FeatureSVM):  # frozen features: compute them once, then fit the SVM on them
        raw = torch.cat([model.features(pictures[i:i + 256]) for i in range(0, len(pictures), 256)])
        model.set_standardisation(raw)
        inputs, step_loss = (raw - model.mean) / model.scale, model.head_loss
    else:
        inputs, step_loss = pictures, model.loss
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.steps), desc=f"train {config.model}", disable=not progress)
    for _ in bar:
        model.train()
        index = torch.randint(0, len(pictures), (config.batch,), generator=generator)
        loss = step_loss(inputs[index], labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    validation = labelled_set(len(source.catalogue) * 5, validation=True, source=source)
    score = accuracy(model, *validation)
    command = "linfuse train-classifier " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items())
    metadata = {"model": config.model, "command": command, "config": asdict(config), "validation_top1": score,
                "torch": torch.__version__, "python": sys.version.split()[0]}
    return save_classifier(model, out or weights_path(config.model), source.names, metadata), score
