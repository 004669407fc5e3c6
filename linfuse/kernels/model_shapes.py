"""The attention problems of the models linfuse converts, as the kernels see them (for readiness checks and benches).

Linear attention replaces UNet/DiT self-attention (LinFusion on SD-1.x/2.x/SDXL, Sana's own ReLU attention); local
attention is CLEAR's window on FLUX, SD3 and PixArt. Head dims follow each model's config: SD-1.5 keeps 8 heads at
every level (d = 40, 80, 160), SD-2.1 and SDXL use d = 64, Sana d = 32, FLUX d = 128 with 512 text tokens, SD3
(medium) d = 64 with 77 + 256 text tokens, PixArt-Σ d = 72 with no text in its self-attention.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionProblem:
    name: str
    op: str  # "linear" or "local"
    batch: int
    heads: int
    head_dim: int
    tokens: int = 0  # linear attention: tokens per image
    grid: tuple[int, int] = (0, 0)  # local attention: image token grid
    radius: int = 0
    num_global: int = 0

    @property
    def sequence(self) -> int:
        return self.tokens if self.op == "linear" else self.num_global + self.grid[0] * self.grid[1]

    def tensors(self, dtype: torch.dtype, device="meta", requires_grad=False, generator=None):
        """q, k, v in layout (B, N, H, d); random on a real device, uninitialised on meta."""
        shape = (self.batch, self.sequence, self.heads, self.head_dim)
        if torch.device(device).type == "meta":
            make = lambda: torch.empty(shape, device=device, dtype=dtype)  # noqa: E731
        else:
            make = lambda: torch.randn(shape, device=device, dtype=dtype, generator=generator)  # noqa: E731
        return tuple(make().requires_grad_(requires_grad) for _ in range(3))

    def run(self, q, k, v, backend=None):
        from . import linear_attention, local_attention

        if self.op == "linear":
            return linear_attention(q, k, v, backend=backend)
        return local_attention(q, k, v, grid=self.grid, radius=self.radius, num_global=self.num_global,
                               backend=backend)


MODEL_PROBLEMS = (
    # SD-1.5 at 1024² (latent 128²; level 0 has 16384 tokens, deeper levels d = 80 and 160), CFG batch 2
    AttentionProblem("SD-1.5 level 0", "linear", 2, 8, 40, tokens=128 * 128),
    AttentionProblem("SD-1.5 level 1", "linear", 2, 8, 80, tokens=64 * 64),
    AttentionProblem("SD-1.5 level 2", "linear", 2, 8, 160, tokens=32 * 32),
    AttentionProblem("SD-2.1", "linear", 2, 5, 64, tokens=96 * 96),
    AttentionProblem("SDXL", "linear", 2, 10, 64, tokens=64 * 64),
    AttentionProblem("Sana-1.6B 4K", "linear", 2, 70, 32, tokens=128 * 128),
    AttentionProblem("FLUX 1K r=8", "local", 1, 24, 128, grid=(64, 64), radius=8, num_global=512),
    AttentionProblem("FLUX 4K r=40", "local", 1, 24, 128, grid=(256, 256), radius=40, num_global=512),
    AttentionProblem("SD3 1K r=16", "local", 2, 24, 64, grid=(64, 64), radius=16, num_global=333),
    AttentionProblem("PixArt-Σ 2K r=16", "local", 2, 16, 72, grid=(128, 128), radius=16),
)


# Head dims the kernels support beyond the models above (linear 32…256, local 32…128), for coverage checks.
HEAD_DIM_PROBLEMS = (
    AttentionProblem("linear d=48", "linear", 1, 8, 48, tokens=4096),
    AttentionProblem("linear d=96", "linear", 1, 8, 96, tokens=4096),
    AttentionProblem("linear d=128", "linear", 1, 8, 128, tokens=4096),
    AttentionProblem("linear d=256", "linear", 1, 4, 256, tokens=4096),
    AttentionProblem("local d=32 r=8", "local", 1, 8, 32, grid=(64, 64), radius=8, num_global=77),
    AttentionProblem("local d=80 r=8", "local", 1, 8, 80, grid=(64, 64), radius=8, num_global=77),
    AttentionProblem("local d=96 r=16", "local", 1, 8, 96, grid=(64, 64), radius=16, num_global=77),
)


def problem(name: str) -> AttentionProblem:
    for candidate in MODEL_PROBLEMS + HEAD_DIM_PROBLEMS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
