"""What the distillation tests of every recipe share: configs with overrides, a run killed mid-way and resumed."""

import math
import signal
import subprocess
import sys
import time

import yaml

from linfuse.distill.trainer import read_log


def write_config(path, config: dict, overrides: dict):
    """``config`` with ``overrides`` (a dict value updates that section) written as YAML to ``path``."""
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def kill_after_steps(command: list[str], log_path, steps: int, timeout: float = 300) -> None:
    """Start ``command`` and SIGKILL it once ``log_path`` holds ``steps`` logged steps."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and len(read_log(log_path) if log_path.exists() else []) < steps:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def assert_resumes_exactly(config_path, log_path, reference: list[dict], *, kill_at: int = 5) -> None:
    """``linfuse distill CONFIG``, killed after ``kill_at`` steps and run again, logs ``reference``'s losses."""
    command = [sys.executable, "-m", "linfuse", "distill", str(config_path)]
    kill_after_steps(command, log_path, kill_at)
    assert kill_at <= len(read_log(log_path)) < len(reference)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming distill from" in resumed.stdout
    assert_same_losses(read_log(log_path), reference)


def assert_same_losses(log: list[dict], reference: list[dict], keys=("loss", "task", "kd", "feat")) -> None:
    assert [r["step"] for r in log] == [r["step"] for r in reference]
    for ours, theirs in zip(log, reference, strict=True):
        for key in keys:
            assert math.isclose(ours[key], theirs[key], rel_tol=1e-5, abs_tol=1e-9), (ours, theirs)
