"""Training the SR companions: L1 loss on luma patches, Adam, cosine learning-rate decay.

    L = mean |f(x_lr) − y_hr|       x_lr = bicubic downscale of y_hr, both luma in [0, 1]

SESR trains in its expanded form (``expansion`` channels inside every linear block) and is saved collapsed.
"""

import math
import sys
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ...errors import InvalidArgumentError
from .data import PatchSampler, training_pictures
from .zoo import build_sr, check_model, save_sr, weights_path


@dataclass
class SRTrainConfig:
    model: str = "sesr-m5"
    scale: int = 2
    steps: int = 2000
    batch: int = 16
    patch: int = 32  # low-resolution patch side
    lr: float = 1e-3
    expansion: int = 64
    seed: int = 0

    def validate(self) -> "SRTrainConfig":
        check_model(self.model, self.scale)
        for name, low in (("steps", 1), ("batch", 1), ("patch", 8), ("expansion", 1)):
            if getattr(self, name) < low:
                raise InvalidArgumentError(f"{name} must be >= {low}; got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise InvalidArgumentError(f"lr must be in (0, 1]; got {self.lr}")
        return self


def train_sr(config: SRTrainConfig, out=None, progress: bool = True):
    """Train one model from scratch and write its collapsed weights to ``out`` (default: the bundled path)."""
    config.validate()
    torch.manual_seed(config.seed)
    model = build_sr(config.model, config.scale, expansion=config.expansion)
    sampler = PatchSampler(training_pictures(), config.scale, config.patch, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    bar = tqdm(range(config.steps), desc=f"train {config.model} x{config.scale}", disable=not progress)
    for _ in bar:
        low, high = (torch.from_numpy(a) for a in sampler.batch(config.batch))
        loss = (model(low) - high).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(l1=f"{loss.item():.4f}")
    command = "linfuse train-sr " + " ".join(f"--{key} {value}" for key, value in asdict(config).items())
    metadata = {"model": config.model, "scale": config.scale, "command": command, "config": asdict(config),
                "torch": torch.__version__, "python": sys.version.split()[0]}
    return save_sr(model, out or weights_path(config.model, config.scale), metadata)
