"""Host-side helpers shared by the Triton launchers (no kernels here)."""

import torch
import triton


def empty(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests fill it with NaN to catch unwritten elements)."""
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)


def bnhd(t: torch.Tensor, layout: str):
    """(sizes, strides) of t in (batch, token, head, feature) order, whatever its layout."""
    order = (0, 1, 2, 3) if layout == "bnhd" else (0, 2, 1, 3)
    return [t.shape[i] for i in order], [t.stride(i) for i in order]


def block_dim(d: int) -> int:
    """Feature dimension padded to a power of two of at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(d))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get IEEE fp32 dots (the user asked for fp32); half inputs TF32, ample for outputs rounded to
    8-11 bits."""
    return "ieee" if dtype == torch.float32 else "tf32"
