"""Reconstruction metrics on the source grid and in the image plane."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rmse(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square error per pixel (in the source's units; sources are peak-normalised)."""
    e, t = np.asarray(estimate, float), np.asarray(truth, float)
    if e.shape != t.shape:
        raise ValueError(f"shapes differ: {e.shape} vs {t.shape}")
    return float(np.sqrt(np.mean((e - t) ** 2)))


def flux_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Relative total-flux error ``(sum(estimate) - sum(truth)) / sum(truth)``."""
    total = float(np.sum(truth))
    if total <= 0:
        raise ValueError("truth has no flux")
    return (float(np.sum(estimate)) - total) / total


def ssim(estimate: np.ndarray, truth: np.ndarray, data_range: float | None = None, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) with a Gaussian window of ``sigma`` pixels.

    ``data_range`` defaults to the truth's peak-to-peak range (1 for peak-normalised sources).
    """
    x, y = np.asarray(estimate, float), np.asarray(truth, float)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    L = float(np.ptp(y)) if data_range is None else float(data_range)
    if L <= 0:
        raise ValueError("data_range must be > 0")
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    f = lambda a: ndimage.gaussian_filter(a, sigma, mode="reflect")  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(np.mean(s))


def reduced_chi2(model_image: np.ndarray, image: np.ndarray, sigma) -> float:
    """``mean(((model - image) / sigma)^2)`` over the image (NaN when sigma is 0: noise-free data).

    Complex data (visibilities, ``sigma`` per real and imaginary part): chi^2 per real datum,
    ``mean(|model - data|^2 / sigma^2) / 2`` (1 for a model that fits to the noise).
    """
    sig = np.broadcast_to(np.asarray(sigma, float), np.shape(image))
    if np.any(sig <= 0):
        return float("nan")
    if np.iscomplexobj(model_image) or np.iscomplexobj(image):
        r = (np.asarray(model_image) - np.asarray(image)) / sig
        return float(np.mean(r.real**2 + r.imag**2) / 2)
    return float(np.mean(((np.asarray(model_image) - np.asarray(image)) / sig) ** 2))
