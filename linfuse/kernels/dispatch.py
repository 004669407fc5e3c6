"""Backend choice shared by the kernels: the PyTorch reference or Triton (CUDA, or the interpreter on CPU)."""

import contextlib
import json
import os
import warnings
from collections.abc import Callable

import torch

from ..errors import InvalidArgumentError

BACKENDS = ("auto", "reference", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_backend(backend: str | None, env_name: str) -> str:
    """The backend argument, or the environment variable ``env_name`` when it is None (default "auto")."""
    source = "backend"
    if backend is None:
        backend, source = os.environ.get(env_name, "auto"), env_name
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"{source} must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def interpreting() -> bool:
    """Whether Triton's interpreter replaces the kernels (TRITON_INTERPRET=1, read when kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(backend: str, q: torch.Tensor, head_dim: int, max_head_dim: int) -> bool:
    """"auto" picks Triton for CUDA tensors it supports; a forced "triton" that cannot run raises and says why."""
    if backend == "reference":
        return False
    problems = []
    if not triton_available():
        problems.append("the triton package is not installed (pip install triton)")
    if q.dtype not in TRITON_DTYPES:
        problems.append(f"dtype {q.dtype} is not one of fp16, bf16, fp32")
    if head_dim > max_head_dim:
        problems.append(f"head dim {head_dim} is above the kernels' maximum of {max_head_dim}")
    stand_in = _compiling_for_a_stand_in(q)
    if not q.is_cuda and not interpreting() and not stand_in:
        problems.append("tensors are on the CPU; use CUDA tensors, or set TRITON_INTERPRET=1 before importing linfuse")
    if backend == "triton" and problems:
        raise InvalidArgumentError("backend 'triton' cannot run here: " + "; ".join(problems))
    if q.is_cuda and problems:
        warn_once("the Triton kernels cannot run this call (" + "; ".join(problems) + "); running the PyTorch "
                  "reference instead")
    return backend == "triton" or ((q.is_cuda or stand_in) and not problems)


def _compiling_for_a_stand_in(q: torch.Tensor) -> bool:
    """Meta tensors under the stand-in driver stand for device tensors (see linfuse.kernels.standin)."""
    if not q.is_meta:
        return False
    from .standin import standin_active

    return standin_active()


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """One warning per distinct reason, however many layers or steps hit it."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def triton_or_reference(fallback: bool, run_triton: Callable, run_reference: Callable):
    """Run the Triton path; when no kernel config fits the target (found before anything launches), a ``fallback``
    call ("auto") runs the reference with one warning naming why, and a forced "triton" raises that error."""
    from .autoconfig import NoConfigFitsError

    try:
        return run_triton()
    except NoConfigFitsError as error:
        if not fallback:
            raise
        warn_once(f"{error}; running the PyTorch reference instead")
        return run_reference()


def on_device(t: torch.Tensor):
    """Launch under the tensor's own CUDA device (Triton and the target's limits read the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def compiles_only(t: torch.Tensor) -> bool:
    """A real meta tensor under the stand-in driver: the launchers compile for its target instead of launching
    (a fake tensor of a trace is never one: tracing runs the shape functions alone)."""
    from torch._subclasses.fake_tensor import is_fake

    return t.is_meta and not is_fake(t) and triton_available() and _compiling_for_a_stand_in(t)


def config_text(config: dict | None) -> str:
    """A forced kernel config as the custom ops take it (a string in their schema); "" lets the launcher choose."""
    return "" if config is None else json.dumps(config)


def config_from_text(text: str) -> dict | None:
    if not text:
        return None
    return {key: tuple(value) if isinstance(value, list) else value for key, value in json.loads(text).items()}
