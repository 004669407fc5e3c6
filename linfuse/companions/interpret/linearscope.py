"""LinearScope: a ReLU-family network, seen at one input, is an affine map; recover it exactly.

For activations a(t) = g(t)·t + c(t) with piecewise-constant gain g and offset c (ReLU: g ∈ {0, 1}; LeakyReLU /
PReLU: g ∈ {α, 1}; ReLU6 / Hardtanh: g = 1 inside the range, 0 outside, with c the clipped value), the network at an
input x₀ computes f(x₀) = A x₀ + b, where A and b are what the network becomes when every activation's gain and
offset are frozen at their values for x₀ (the "gates"). With gates frozen the network is affine in its input:

    b = f_gates(0)             (the frozen network applied to a zero input: every bias, carried through the gates)
    A e_j = f_gates(e_j) − b   (column j), or all at once as the Jacobian of f_gates

so A x₀ + b = f(x₀) to float rounding. Rows of A (one per output value) show which input pixels make that output,
columns show where one input pixel goes; both reshape to images.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import InvalidArgumentError

GATED = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Hardtanh)  # nn.ReLU6 is a Hardtanh
NOT_PIECEWISE_LINEAR = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softmax, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class LinearMap:
    matrix: torch.Tensor  # (outputs, inputs)
    bias: torch.Tensor  # (outputs,)
    input_shape: tuple
    output_shape: tuple

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.matrix @ x.reshape(-1).to(self.matrix) + self.bias).reshape(self.output_shape)

    def row_image(self, index: int) -> torch.Tensor:
        """How every input value contributes to output value ``index``, shaped like the input."""
        return self.matrix[index].reshape(self.input_shape)

    def column_image(self, index: int) -> torch.Tensor:
        """Where input value ``index`` goes, shaped like the output."""
        return self.matrix[:, index].reshape(self.output_shape)


def _gate(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain, offset) with module(x) = gain·x + offset elementwise."""
    zero = torch.zeros_like(x)
    if isinstance(module, nn.Hardtanh):
        low, high = module.min_val, module.max_val
        inside = ((x > low) & (x < high)).to(x.dtype)
        return inside, torch.where(x >= high, zero + high, torch.where(x <= low, zero + low, zero))
    if isinstance(module, nn.ReLU):
        return (x > 0).to(x.dtype), zero
    if isinstance(module, nn.LeakyReLU):
        return torch.where(x > 0, torch.ones_like(x), zero + module.negative_slope), zero
    slope = module.weight.to(x.dtype)
    slope = slope.view(1, -1, *([1] * (x.ndim - 2))) if slope.numel() > 1 else slope
    return torch.where(x > 0, torch.ones_like(x), slope.expand_as(x)), zero


def _gated_modules(model: nn.Module) -> list[nn.Module]:
    modules = [m for m in model.modules() if isinstance(m, GATED)]
    others = [type(m).__name__ for m in model.modules() if isinstance(m, NOT_PIECEWISE_LINEAR)]
    if others:
        raise InvalidArgumentError(f"LinearScope needs a network whose activations are ReLU, LeakyReLU, PReLU, ReLU6 "
                                   f"or Hardtanh and that has no max-pooling; this one has {sorted(set(others))}")
    return modules


def record_gates(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(gain, offset) of every activation call of ``model(x)``, in call order."""
    gates = []
    hooks = [m.register_forward_hook(lambda m, args, out: gates.append(tuple(t.detach() for t in _gate(m, args[0]))))
             for m in _gated_modules(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return gates


def _frozen(model: nn.Module, gates, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with the k-th activation call replaced by x·gain_k + offset_k."""
    calls = iter(gates)

    def frozen(module, args, out):
        gain, offset = next(calls)
        return args[0] * gain.to(args[0]) + offset.to(args[0])

    hooks = [m.register_forward_hook(frozen) for m in _gated_modules(model)]
    try:
        return model(x)
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def gates_frozen(model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float64, caller: str = "gates_frozen"):
    """Yields ``f(t)``: the network with its gates frozen at x, computing in ``dtype`` (restored afterwards)."""
    if x.shape[0] != 1:
        raise InvalidArgumentError(f"{caller} takes one sample (batch size 1); got a batch of {x.shape[0]}")
    model = model.eval()
    gates = record_gates(model, x)
    original = next(model.parameters()).dtype
    model.to(dtype)
    try:
        yield lambda t: _frozen(model, gates, t)
    finally:
        model.to(original)


def linear_map(model: nn.Module, x: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> LinearMap:
    """The affine map (A, b) that ``model`` applies at input ``x`` (one sample, batch dimension 1)."""
    with gates_frozen(model, x, dtype, "linear_map") as frozen:
        with torch.no_grad():
            bias = frozen(torch.zeros_like(x, dtype=dtype))
        matrix = torch.autograd.functional.jacobian(frozen, x.to(dtype))
    outputs, inputs = bias.numel(), x.numel()
    return LinearMap(matrix.reshape(outputs, inputs), bias.reshape(-1), tuple(x.shape), tuple(bias.shape))


def output_row(model: nn.Module, x: torch.Tensor, index: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Row ``index`` of A (how each input value makes output value ``index``), shaped like x: one backward pass
    through the gate-frozen network instead of the whole Jacobian, for inputs too large for :func:`linear_map`."""
    with gates_frozen(model, x, dtype, "output_row") as frozen:
        probe = x.detach().to(dtype).requires_grad_(True)
        out = frozen(probe).reshape(-1)
        if not 0 <= index < out.numel():
            raise InvalidArgumentError(f"index must be an output position in [0, {out.numel() - 1}]; got {index}")
        (row,) = torch.autograd.grad(out[index], probe)
    return row


def signed_picture(values: torch.Tensor, size: int | None = None):
    """A (…, H, W) map (channels summed) as a PIL picture: blue negative, white zero, red positive, scaled by the
    largest magnitude; ``size`` enlarges it (nearest) so single pixels stay visible."""
    import numpy as np
    from PIL import Image

    plane = values.detach().double().reshape(-1, *values.shape[-2:]).sum(dim=0)
    peak = plane.abs().max().clamp_min(1e-30)
    t = (plane / peak).numpy()
    red = np.where(t > 0, 1.0, 1.0 + t)
    blue = np.where(t < 0, 1.0, 1.0 - t)
    green = 1.0 - np.abs(t)
    picture = Image.fromarray((np.stack([red, green, blue], axis=-1) * 255).round().astype(np.uint8))
    if size:
        longest = max(picture.size)
        picture = picture.resize((size * picture.width // longest, size * picture.height // longest), Image.NEAREST)
    return picture
