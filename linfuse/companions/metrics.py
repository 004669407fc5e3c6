"""Image-quality metrics as the super-resolution literature reports them.

Both compare the luma of two RGB images after cropping ``border`` pixels from every side (the SR convention: the
border is the scale factor, where the missing context makes every method guess):

    Y    = 16 + (65.481·R + 128.553·G + 24.966·B) / 255        R, G, B in [0, 255]  (ITU-R BT.601, studio range)
    PSNR = 10·log10(255² / mean((Y₁ − Y₂)²))
    SSIM = mean over pixels of  (2μ₁μ₂ + C₁)(2σ₁₂ + C₂) / ((μ₁² + μ₂² + C₁)(σ₁² + σ₂² + C₂))
           with μ, σ², σ₁₂ from an 11×11 Gaussian window (σ = 1.5), C₁ = (0.01·255)², C₂ = (0.03·255)²
"""

import math

import numpy as np
from PIL import Image

from ..errors import InvalidArgumentError


def luma(image) -> np.ndarray:
    """BT.601 studio-range luma (float64, 16…235) of an RGB PIL image or (H, W, 3) array."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _cropped_pair(a, b, border: int) -> tuple[np.ndarray, np.ndarray]:
    y1, y2 = luma(a), luma(b)
    if y1.shape != y2.shape:
        raise InvalidArgumentError(f"images differ in size: {y1.shape[::-1]} vs {y2.shape[::-1]}")
    if border < 0 or 2 * border >= min(y1.shape):
        raise InvalidArgumentError(f"border must be in [0, {min(y1.shape) // 2 - 1}] for these images; got {border}")
    if border:
        y1, y2 = y1[border:-border, border:-border], y2[border:-border, border:-border]
    return y1, y2


def psnr_y(a, b, border: int = 0) -> float:
    y1, y2 = _cropped_pair(a, b, border)
    mse = float(np.mean((y1 - y2) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian blur, 'valid' region only (as the reference SSIM code does)."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, taps, mode="valid"), 1, x)
    return np.apply_along_axis(lambda c: np.convolve(c, taps, mode="valid"), 0, rows)


def ssim_y(a, b, border: int = 0) -> float:
    y1, y2 = _cropped_pair(a, b, border)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = _gaussian_filter(y1), _gaussian_filter(y2)
    var1 = _gaussian_filter(y1 * y1) - mu1**2
    var2 = _gaussian_filter(y2 * y2) - mu2**2
    cov = _gaussian_filter(y1 * y2) - mu1 * mu2
    index = ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))
    return float(index.mean())
