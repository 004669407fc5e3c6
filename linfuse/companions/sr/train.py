"""Training the SR companions: L1 loss on luma patches, Adam, cosine learning-rate decay.

    L = mean |f(x_lr) − y_hr|       x_lr = bicubic downscale of y_hr, both luma in [0, 1]

SESR trains in its expanded form (``expansion`` channels inside every linear block) and is saved collapsed.
``init`` continues from a saved weights file instead, in the form the file holds (collapsed, for SESR): a cheaper
second phase, each step about a sixth of an expanded step's cost for SESR-M5.
"""

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...errors import InvalidArgumentError
from .data import PatchSampler, training_pictures
from .zoo import build_sr, check_model, load_sr, read_metadata, save_sr, weights_path


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
    init: str = ""  # a weights file to continue from (its saved form); "" = from scratch

    def validate(self) -> "SRTrainConfig":
        check_model(self.model, self.scale)
        for name, low in (("steps", 1), ("batch", 1), ("patch", 8), ("expansion", 1)):
            if getattr(self, name) < low:
                raise InvalidArgumentError(f"{name} must be >= {low}; got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise InvalidArgumentError(f"lr must be in (0, 1]; got {self.lr}")
        if self.init and not Path(self.init).is_file():
            raise InvalidArgumentError(f"init must be an existing weights file or empty; got {self.init!r}")
        return self


def train_sr(config: SRTrainConfig, out=None, progress: bool = True):
    """Train one model from scratch and write its collapsed weights to ``out`` (default: the bundled path)."""
    config.validate()
    torch.manual_seed(config.seed)
    if config.init:
        model = load_sr(config.model, config.scale, path=config.init).train()
    else:
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
    command = "linfuse train-sr " + " ".join(f"--{key} {value}" for key, value in asdict(config).items()
                                             if key != "init" or value)
    if config.init:
        metadata_init = read_metadata(config.init).get("command", "")
        command += f"   (continuing {Path(config.init).name}, made by: {metadata_init})"
    metadata = {"model": config.model, "scale": config.scale, "command": command, "config": asdict(config),
                "torch": torch.__version__, "python": sys.version.split()[0]}
    return save_sr(model, out or weights_path(config.model, config.scale), metadata)
