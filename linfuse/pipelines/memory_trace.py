"""Peak memory of a PyTorch computation, counted on the meta device: every tensor an operator allocates, until freed.

A ``TorchDispatchMode`` sees each aten operator's outputs. A storage is counted once, from the first operator that
returns it until the last tensor viewing it is garbage-collected (``weakref.finalize``); storages that existed before
the trace (weights, inputs) are not counted. Run on meta tensors this costs no memory and little time, and it counts
what eager PyTorch would hold at once; workspace inside a single kernel (cuDNN, oneDNN scratch) is not seen.

Code that moves tensors to host memory while it runs (the lean mode's parked skips) allocates its host copies
inside :func:`on_host`: the trace counts them apart (``host_peak``), not as device memory. ``max_elements`` is the
element count of the largest tensor the computation allocated (32-bit indexing fails at 2^31 in some kernels).
"""

import threading
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..kernels.local_attention import output_only


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes(existing) as trace: …`` then ``trace.peak`` (device bytes), ``trace.host_peak`` and
    ``trace.max_elements``."""

    _local = threading.local()  # the traces running in this thread (dispatch modes are per thread too)

    @classmethod
    def active(cls) -> list["LiveBytes"]:
        if not hasattr(cls._local, "traces"):
            cls._local.traces = []
        return cls._local.traces

    def __init__(self, existing=()):
        super().__init__()
        self.known = {storage_key(t) for t in existing}
        self.live: dict[int, list] = {}  # storage -> [bytes, tensors alive, on host]
        self.current = self.peak = 0
        self.host_current = self.host_peak = 0
        self.max_elements = 0
        self.host_block: int | None = None  # inside on_host: the bytes a new storage takes on the host (0: its own)

    def __enter__(self):
        LiveBytes.active().append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        LiveBytes.active().remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        key = storage_key(tensor)
        if key in self.known:
            return
        entry = self.live.get(key)
        if entry is None:
            size = tensor.untyped_storage().nbytes()
            self.max_elements = max(self.max_elements, size // max(tensor.element_size(), 1))
            if self.host_block is not None:
                size = self.host_block or size
                entry = self.live[key] = [size, 0, True]
                self.host_current += size
                self.host_peak = max(self.host_peak, self.host_current)
            else:
                entry = self.live[key] = [size, 0, False]
                self.current += size
                self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            if entry[2]:
                self.host_current -= entry[0]
            else:
                self.current -= entry[0]
            del self.live[key]


@contextmanager
def on_host(nbytes: int | None = None):
    """Tensors allocated inside are host memory in the traces that are running, ``nbytes`` each (default: their
    size)."""
    traces = list(LiveBytes.active())
    for recorder in traces:
        recorder.host_block = nbytes or 0
    try:
        yield
    finally:
        for recorder in traces:
            recorder.host_block = None


class FusedAttention(TorchFunctionMode):
    """Count ``F.scaled_dot_product_attention`` as the fused kernels that run it on GPUs and CPUs: its output only.

    On the meta device SDPA falls back to the math path, which would count the N×N score matrix that flash and
    memory-efficient kernels never hold.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]  # diffusers' attention dispatch passes keywords
            value = args[2] if len(args) > 2 else kwargs["value"]
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **kwargs)


def trace(function, *inputs, existing=()) -> LiveBytes:
    """Run ``function(*inputs)`` under no_grad and :class:`LiveBytes` (beyond ``existing`` tensors and the inputs;
    the result freed) and return the finished trace. Attention counts as the fused kernels that run it: SDPA
    (:class:`FusedAttention`) and local attention (:func:`~linfuse.kernels.local_attention.output_only`) allocate
    only their outputs."""
    known = [*existing, *(t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor))]
    with torch.no_grad(), FusedAttention(), output_only(), LiveBytes(known) as recorder:
        result = function(*inputs)
        del result
    return recorder


def traced_peak(function, *inputs, existing=()) -> int:
    """Device bytes ``function(*inputs)`` holds at its peak, beyond ``existing`` tensors and the inputs."""
    return trace(function, *inputs, existing=existing).peak
