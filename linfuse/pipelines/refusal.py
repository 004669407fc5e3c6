"""The one refusal of a job that does not fit, worded the same by generate, img2img, high-res, batch, the UI and
``linfuse estimate``: what the job needs at its peak, the limit rule (a job may use at most ``SAFETY`` of the free
memory, and no tensor may reach 2^31 elements), the largest size of the same aspect ratio that fits, and only what
the user can change from where they are (each named as the CLI flag and the Python argument).
"""

from math import gcd

from .preflight import INDEX_LIMIT, SAFETY, InsufficientMemoryError, MemoryEstimate, memory_text


def memory_hints(*, memory_mode: str, linearized: bool, method: str = "linfusion",
                 cap: str | None = None) -> list[str]:
    """What may make a job fit: the auto memory mode (when another was asked), a linearized model (when the model
    still runs softmax attention), ``cap`` (how to raise a cap the user gave) or else less memory in use."""
    hints = []
    if memory_mode != "auto":
        hints.append("the auto memory mode, which takes the leanest setting that fits (--memory-mode auto, "
                      "memory='auto')")
    if not linearized:
        hints.append(f"a linearized model (--method {method}, linfuse.linearize(pipe, method='{method}'))")
    hints.append(cap or "more free memory (close other jobs on the device)")
    return hints


def refusal_message(what: str, width: int, height: int, estimate: MemoryEstimate,
                    largest: tuple[int, int] | None, hints: list[str]) -> str:
    """``what`` (e.g. "16384x16384 text-to-image") does not fit: why, by the limit rule, and what would."""
    device = "memory" if estimate.shared else f"{estimate.device} memory"
    worst = max(estimate.stages, key=lambda s: estimate.stage_need(s)[0])
    mode = f", {worst.mode}" if worst.mode else ""
    weights = f" with {memory_text(estimate.resident)} of weights" if estimate.resident else ""
    reasons = []
    if estimate.limit_device is not None and estimate.peak_device > estimate.limit_device:
        reasons.append(f"it needs {memory_text(estimate.peak_device)} at its peak ({worst.label} "
                       f"{worst.width}x{worst.height}{mode}{weights}) and may use at most {SAFETY:.0%} of the free "
                       f"{device}: {memory_text(estimate.limit_device)} of {memory_text(estimate.free_device)}")
    if not estimate.shared and estimate.free_host is not None and estimate.peak_host > SAFETY * estimate.free_host:
        reasons.append(f"its host part needs {memory_text(estimate.peak_host)} and may use at most {SAFETY:.0%} of "
                       f"the free host memory: {memory_text(int(SAFETY * estimate.free_host))} of "
                       f"{memory_text(estimate.free_host)}")
    if estimate.max_elements >= INDEX_LIMIT:
        reasons.append(f"a tensor of {estimate.max_elements:.3g} elements reaches the 2^31-element limit of the "
                       "convolution kernels")
    divisor = gcd(width, height)
    if largest:
        fitting = f"The largest {width // divisor}:{height // divisor} size that fits is {largest[0]}x{largest[1]}"
    else:
        fitting = f"No {width // divisor}:{height // divisor} size fits"
    return (f"{what} does not fit: {'; '.join(reasons) or 'a stage does not fit'}. {fitting}. To make "
            f"{width}x{height} fit, try {'; or '.join(hints)}.")


def refuse(what: str, width: int, height: int, estimate: MemoryEstimate, largest: tuple[int, int] | None,
           hints: list[str]) -> None:
    """Raise :class:`InsufficientMemoryError` with :func:`refusal_message`; it carries the estimate and the size."""
    error = InsufficientMemoryError(refusal_message(what, width, height, estimate, largest, hints))
    error.estimate, error.largest = estimate, largest
    raise error
