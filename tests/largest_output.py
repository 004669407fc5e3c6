"""A dispatch mode that records the element count of the largest tensor the operators of a block return, among
those a test cares about (float32 ones, floating-point ones, the outputs of matrix products)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestOutput(TorchDispatchMode):
    """``with LargestOutput(keep) as seen: …`` then ``seen.largest``: the most elements of a tensor returned by an
    operator, over the tensors for which ``keep(func, tensor)`` holds."""

    def __init__(self, keep):
        super().__init__()
        self.keep, self.largest = keep, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and self.keep(func, tensor):
                self.largest = max(self.largest, tensor.nelement())
        return out
