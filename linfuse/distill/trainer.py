"""The training loop shared by distillation and teacher training: accelerate, checkpoints, resume, NaN guard, logs.

Randomness is keyed by step: the generator a step draws data, timesteps and noise from is seeded from
(seed, step, micro-batch, process), so a resumed run sees exactly the batches an uninterrupted run would.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError, LinfuseError
from ..fileio import atomic_write
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

MIXED_PRECISION = ("no", "fp16", "bf16")
LOG_NAME = "loss_log.jsonl"


class TrainingDivergedError(LinfuseError):
    """A loss became NaN or infinite; the run stopped and the last good checkpoint is kept."""


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    mixed_precision: str = "no"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0

    def validate(self, section: str = "train") -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size,
                    "gradient_accumulation": self.gradient_accumulation, "checkpoint_every": self.checkpoint_every,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{section}.{name} must be an integer >= 1; got {value!r}")
        if not 0 < self.learning_rate <= 1:
            raise InvalidArgumentError(f"{section}.learning_rate must be in (0, 1]; got {self.learning_rate}")
        if self.weight_decay < 0:
            raise InvalidArgumentError(f"{section}.weight_decay must be >= 0; got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise InvalidArgumentError(f"{section}.max_grad_norm must be > 0 or null; got {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InvalidArgumentError(f"{section}.mixed_precision must be one of {', '.join(MIXED_PRECISION)}; "
                                       f"got {self.mixed_precision!r}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise InvalidArgumentError(f"{section}.mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on CPU")


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + micro) * 1024 + process)


def make_accelerator(settings: TrainSettings):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # One process may train several stages (teacher: VAE, then UNet) or runs with other precision: accelerate keeps
    # its settings in singletons, so forget them (the distributed setup, PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True without CUDA lets `torchrun`/`accelerate launch` start several CPU processes (gloo) as well.
    return Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                       gradient_accumulation_steps=settings.gradient_accumulation)


StepFn = Callable[[int, torch.Generator], dict]


class Trainer:
    """Runs ``settings.steps`` optimizer steps of ``step_fn``; resumes from ``output_dir/checkpoints``.

    ``step_fn(step, generator)`` computes one micro-batch and returns a dict of scalar tensors with the total under
    "loss" (the others are logged). ``modules`` (name -> nn.Module) are what a checkpoint stores and restores;
    ``model`` is the prepared module whose gradients accelerate synchronises.
    """

    def __init__(self, output_dir, settings: TrainSettings, accelerator, model, optimizer, params, modules: dict,
                 step_fn: StepFn, *, description: str = "train", on_step_end: Callable[[int], None] | None = None):
        self.output_dir = Path(output_dir)
        self.settings = settings
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.params = list(params)
        self.modules = modules
        self.step_fn = step_fn
        self.description = description
        self.on_step_end = on_step_end
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.log_path = self.output_dir / LOG_NAME

    @property
    def effective_batch(self) -> int:
        return self.settings.batch_size * self.settings.gradient_accumulation * self.accelerator.num_processes

    def resume(self) -> int:
        """Load the newest checkpoint, if any; returns the number of steps already done."""
        path = latest_checkpoint(self.checkpoint_root)
        if path is None:
            self._rewrite_log(0)
            return 0
        state = load_checkpoint(path, self.modules, self.optimizer)
        self._rewrite_log(state["step"])
        if self.accelerator.is_main_process:
            print(f"resuming {self.description} from {path} (step {state['step']})")
        return state["step"]

    def _rewrite_log(self, step: int) -> None:
        """Drop log lines after ``step``: a killed run may have logged steps its last checkpoint lacks."""
        if not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        atomic_write(self.log_path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))

    def run(self) -> list[dict]:
        start = self.resume()
        total = self.settings.steps
        if self.accelerator.is_main_process:
            print(f"{self.description}: steps {start + 1}..{total} on {self.accelerator.num_processes} process(es) "
                  f"({self.accelerator.device}), mixed precision {self.settings.mixed_precision}, "
                  f"effective batch {self.effective_batch}")
        bar = tqdm(total=total, initial=start, desc=self.description, disable=not self.accelerator.is_main_process)
        for step in range(start, total):
            record = self._optimizer_step(step)
            if self.on_step_end:
                self.on_step_end(step)
            self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            done = step + 1
            if done % self.settings.checkpoint_every == 0 or done == total:
                self.save(done)
        bar.close()
        return self.read_log()

    def _optimizer_step(self, step: int) -> dict:
        accumulate = self.settings.gradient_accumulation
        sums: dict[str, float] = {}
        started = time.perf_counter()
        for micro in range(accumulate):
            generator = step_generator(self.settings.seed, step, micro, self.accelerator.process_index)
            with self.accelerator.accumulate(self.model):
                losses = self.step_fn(step, generator)
                values = {name: float(value.detach()) for name, value in losses.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    self._diverged(step, values)
                self.accelerator.backward(losses["loss"])
                if self.settings.max_grad_norm and self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.params, self.settings.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value / accumulate
        if self.accelerator.num_processes > 1:  # log the mean over processes, not process 0's share
            means = self.accelerator.reduce(torch.tensor(list(sums.values()), device=self.accelerator.device), "mean")
            sums = dict(zip(sums, means.tolist(), strict=True))
        return {"step": step + 1, **sums, "seconds": round(time.perf_counter() - started, 4)}

    def _diverged(self, step: int, values: dict) -> None:
        last = latest_checkpoint(self.checkpoint_root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise TrainingDivergedError(
            f"{self.description}: loss is not finite at step {step + 1} ({shown}); stopped, {kept}. Lower the "
            "learning rate, use mixed_precision 'bf16' or 'no', or add task-only warm-up steps, then run again: "
            "it resumes from that checkpoint"
        )

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")

    def save(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_root, step, self.modules, self.optimizer.optimizer
                            if hasattr(self.optimizer, "optimizer") else self.optimizer, {},
                            self.settings.keep_checkpoints)

    def read_log(self) -> list[dict]:
        return read_log(self.log_path)


def read_log(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
