"""Host-side helpers shared by the Triton launchers (no kernels here)."""

from dataclasses import dataclass, field

import torch
import triton

from .dispatch import interpreting


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
    """fp32 inputs get IEEE fp32 dots (the user asked for fp32). Half inputs dot in their own type on a GPU, where
    the setting has no effect; where they are computed in fp32 instead (bf16 under the interpreter) TF32 is ample for
    outputs rounded to 8-11 bits."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_dtype(dtype: torch.dtype):
    """Operand dtype of the tensor-core dots: the input's own half type on a GPU (fp32 accumulate), fp32 for fp32
    inputs. Triton's interpreter cannot multiply bf16 (it multiplies the raw bits), so there bf16 dots run in fp32."""
    import triton.language as tl

    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting()):
        return tl.float32
    return tl.float16 if dtype == torch.float16 else tl.bfloat16



@dataclass
class Launch:
    """One kernel launch, built before it runs, so a config can be compiled and checked before anything launches.

    ``meta`` holds the constexpr arguments and the compiler options (num_warps, num_stages). Under the stand-in
    driver (:mod:`linfuse.kernels.standin`) running a launch compiles it for the stand-in's target and records it.
    """

    kernel: object
    grid: tuple
    args: tuple
    meta: dict
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else str(self.kernel)

    def compile(self):
        """The compiled kernel for the active target (Triton's cache makes a repeat free)."""
        return self.kernel.warmup(*self.args, grid=self.grid, **self.meta)

    def run(self):
        from .standin import CompiledRecord, active_standin

        active = active_standin()
        if active is not None:
            active.log.kernels.append(CompiledRecord(self.name, self.grid, self.config, self.compile(),
                                                     active.limits.arch))
            return
        self.kernel[self.grid](*self.args, **self.meta)
