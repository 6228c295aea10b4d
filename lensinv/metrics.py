"""Reconstruction metrics on the source grid and in the image plane."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve


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


@dataclass(frozen=True)
class ResidualCoherence:
    """Smoothed normalised residuals over a region (see :func:`residual_coherence`).

    For residuals that are white noise ``mean_z2`` is about 1, ``fraction_above_3`` about 0.003 and
    ``max_abs_z`` a few (it grows slowly with the region's size); a coherent residual (an arc the
    model misses) raises all three. ``reference_rms`` is the rms of ``z`` over the reference
    region where one was given (1 for white noise; larger where the noise is correlated, as in
    drizzled images, or the background is misfitted), and ``mean_z2_relative`` is ``mean_z2``
    divided by its square: about 1 where the arcs' residuals are no more coherent than the
    background's (NaN without a reference).
    """

    n_pixels: int
    mean_z2: float
    fraction_above_3: float
    max_abs_z: float
    reference_rms: float = math.nan
    mean_z2_relative: float = math.nan


def residual_coherence(normalised_residual: np.ndarray, mask: np.ndarray, scale: float,
                       region: np.ndarray | None = None,
                       reference: np.ndarray | None = None) -> ResidualCoherence:
    """How coherent the residuals are on scales of ``scale`` pixels.

    The normalised residuals ``(data - model) / sigma`` on the pixels of ``mask`` are smoothed with
    a Gaussian of standard deviation ``scale`` (pixels; e.g. the PSF's) and divided by the standard
    deviation that white noise would have there, ``z = (G * r) / sqrt(G^2 * m)``, so that ``z`` is a
    unit normal wherever the model fits to the noise; statistics over ``region`` (default ``mask``)
    where at least half the smoothing kernel lies in the mask.

    Parameters
    ----------
    normalised_residual : ndarray
        ``(n, n)`` residuals in units of the noise (values outside ``mask`` are ignored).
    mask : ndarray of bool
        ``(n, n)`` fitted pixels.
    scale : float
        Smoothing scale (pixels, > 0).
    region : ndarray of bool, optional
        ``(n, n)`` pixels to summarise (e.g. the arcs); intersected with ``mask``.
    reference : ndarray of bool, optional
        ``(n, n)`` pixels where the model holds no signal to misfit (e.g. the background away
        from the arcs and the lens); intersected with ``mask``. Calibrates ``z``'s actual
        spread (``reference_rms``, ``mean_z2_relative``); at least 50 pixels.
    """
    r = np.asarray(normalised_residual, dtype=float)
    m = np.asarray(mask, dtype=bool)
    if r.ndim != 2 or m.shape != r.shape:
        raise ValueError(f"normalised_residual and mask must be 2-d arrays of one shape, got {r.shape} and {m.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0 (pixels), got {scale!r}")
    region = m if region is None else (np.asarray(region, dtype=bool) & m)
    if region.shape != r.shape:
        raise ValueError(f"region must have the residuals' shape {r.shape}, got {region.shape}")
    if not np.all(np.isfinite(r[m])):
        raise ValueError("normalised_residual has non-finite values inside mask")
    w = m.astype(float)
    smooth = ndimage.gaussian_filter(np.where(m, r, 0.0), scale, mode="constant")
    # the variance white noise would have after smoothing: the mask convolved with the squared kernel
    half = int(4.0 * scale + 0.5)
    delta = np.zeros((2 * half + 1, 2 * half + 1))
    delta[half, half] = 1.0
    kernel2 = ndimage.gaussian_filter(delta, scale, mode="constant") ** 2
    g2 = np.maximum(fftconvolve(w, kernel2, mode="same"), 0.0)
    cover = ndimage.gaussian_filter(w, scale, mode="constant")
    use = region & (cover >= 0.5)
    if not use.any():
        raise ValueError("region holds no pixel where the mask covers half the smoothing kernel")
    zmap = smooth / np.sqrt(np.maximum(g2, 1e-300))
    z = zmap[use]
    mean_z2 = float(np.mean(z**2))
    ref_rms = rel = math.nan
    if reference is not None:
        ref = np.asarray(reference, dtype=bool)
        if ref.shape != r.shape:
            raise ValueError(f"reference must have the residuals' shape {r.shape}, got {ref.shape}")
        ref = ref & m & (cover >= 0.5)
        if ref.sum() < 50:
            raise ValueError(f"reference holds {int(ref.sum())} usable pixels: at least 50 are needed")
        ref_rms = float(np.sqrt(np.mean(zmap[ref] ** 2)))
        rel = mean_z2 / ref_rms**2
    return ResidualCoherence(n_pixels=int(use.sum()), mean_z2=mean_z2,
                             fraction_above_3=float(np.mean(np.abs(z) > 3)), max_abs_z=float(np.max(np.abs(z))),
                             reference_rms=ref_rms, mean_z2_relative=rel)
