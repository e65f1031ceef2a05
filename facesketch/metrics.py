"""Image-quality metrics as the face-sketch literature computes them (numpy/scipy).

SSIM follows Wang et al. (2004) and their reference MATLAB ssim_index: luma
from RGB by the ITU-R BT.601 weights MATLAB's rgb2gray uses, an 11x11 Gaussian
window with sigma 1.5, K1=0.01, K2=0.03, data range 255, the population
(not sample) covariance, and only the window positions fully inside the image
('valid' filtering).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_GRAY = np.array([0.2989, 0.5870, 0.1140])


def to_gray(img: np.ndarray) -> np.ndarray:
    """HxW or HxWx3 (uint8 or float in 0..255) -> float64 HxW luma in 0..255."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        if a.shape[2] == 1:
            return a[:, :, 0]
        return a[:, :, :3] @ _GRAY
    if a.ndim != 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {a.shape}")
    return a


def _gauss_valid(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    y = ndimage.correlate1d(x, k, axis=0, mode="constant")
    y = ndimage.correlate1d(y, k, axis=1, mode="constant")
    return y[radius:-radius, radius:-radius]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two images of the same size (grayscale comparison)."""
    x, y = to_gray(a), to_gray(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of the same size, got {x.shape} and {y.shape}")
    if min(x.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {x.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _gauss_valid(x), _gauss_valid(y)
    sxx = _gauss_valid(x * x) - mx * mx
    syy = _gauss_valid(y * y) - my * my
    sxy = _gauss_valid(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB over all channels; inf for identical inputs."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"PSNR needs arrays of the same shape, got {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))
