"""Peak memory of a PyTorch computation, counted on the meta device: every tensor an operator allocates, until freed.

A ``TorchDispatchMode`` sees each aten operator's outputs. A storage is counted once, from the first operator that
returns it until the last tensor viewing it is garbage-collected (``weakref.finalize``); storages that existed before
the trace (weights, inputs) are not counted. Run on meta tensors this costs no memory and little time, and it counts
what eager PyTorch would hold at once; workspace inside a single kernel (cuDNN, oneDNN scratch) is not seen.
"""

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes(existing) as trace: …`` then ``trace.peak`` (bytes) and ``trace.current``."""

    def __init__(self, existing=()):
        super().__init__()
        self.known = {storage_key(t) for t in existing}
        self.live: dict[int, list[int]] = {}  # storage -> [bytes, tensors alive]
        self.current = self.peak = 0

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
            entry = self.live[key] = [tensor.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


class FusedAttention(TorchFunctionMode):
    """Count ``F.scaled_dot_product_attention`` as the fused kernels that run it on GPUs and CPUs: its output only.

    On the meta device SDPA falls back to the math path, which would count the N×N score matrix that flash and
    memory-efficient kernels never hold.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, value = args[0], args[2] if len(args) > 2 else kwargs["value"]
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **kwargs)


def traced_peak(function, *inputs, existing=()) -> int:
    """Bytes ``function(*inputs)`` holds at its peak, beyond ``existing`` tensors and the inputs; result freed."""
    known = [*existing, *(t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor))]
    with torch.no_grad(), FusedAttention(), LiveBytes(known) as trace:
        result = function(*inputs)
        del result
    return trace.peak
