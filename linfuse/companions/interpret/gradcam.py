"""Grad-CAM (Selvaraju et al., 2017): where a convolutional classifier looks for a class.

For the activations A (K, h, w) of a chosen convolutional layer and the class score y_c:

    α_k = (1 / hw) Σ_ij ∂y_c / ∂A_k[i, j]          (channel importance: the gradient, averaged over space)
    L_c = ReLU(Σ_k α_k · A_k)                       (h, w), upsampled bilinearly to the input size, scaled to [0, 1]

With a global-average-pool + linear head right after the layer, α_k = W[c, k] / hw, so L_c is the class activation
map Σ_k W[c, k] A_k (CAM) up to a positive factor.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InvalidArgumentError


def last_conv_layer(model: torch.nn.Module) -> torch.nn.Module:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise InvalidArgumentError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def grad_cam(model: torch.nn.Module, x: torch.Tensor, target: int | None = None,
             layer: torch.nn.Module | None = None) -> tuple[torch.Tensor, int]:
    """(map (H, W) in [0, 1] at the input's size, class explained) for one input x (1, C, H, W).

    ``target`` defaults to the predicted class; ``layer`` to the last Conv2d (its output is hooked; with a ReLU
    after it the map uses the pre-activation, as the common implementations do for the last conv)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise InvalidArgumentError(f"grad_cam explains one picture: x must be (1, C, H, W); got {tuple(x.shape)}")
    layer = layer or last_conv_layer(model)
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    try:
        model.eval()
        scores = model(x)
    finally:
        handle.remove()
    if target is None:
        target = int(scores.argmax(dim=1))
    if not 0 <= target < scores.shape[1]:
        raise InvalidArgumentError(f"target must be a class index in [0, {scores.shape[1] - 1}]; got {target}")
    activations = captured["a"]
    (gradients,) = torch.autograd.grad(scores[0, target], activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0].detach()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), target


def overlay(image: Image.Image, cam: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The picture with the map laid over it in red–yellow (low values transparent)."""
    heat = cam.clamp(0, 1).numpy()
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1) * 255
    base = np.asarray(image.convert("RGB").resize(heat.shape[::-1]), dtype=np.float64)
    mix = base * (1 - alpha * heat[..., None]) + colour * alpha * heat[..., None]
    return Image.fromarray(mix.clip(0, 255).astype(np.uint8))
