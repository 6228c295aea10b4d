"""Point-spread-function kernels: validation, Gaussian, Airy, and FITS files.

A kernel is a 2-D float64 array with an odd number of pixels per side, finite,
non-negative and normalised to sum 1, sampled on the image grid's pixels. The
PSF operator applies it with the ``scipy.signal.convolve2d(mode="same")``
convention.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
from scipy.special import erf

from ._validate import int_at_least, positive_float
from .io import read_fits_image

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Airy pattern (2 J1(x) / x)^2: half maximum at x = 1.6163, first zero at x = 3.8317
AIRY_ZERO_PER_FWHM = 3.8317059702075125 / (2.0 * 1.616339948310703)


def validate_kernel(kernel: np.ndarray, name: str = "psf") -> np.ndarray:
    """Check a PSF kernel and return a normalised float64 copy.

    Raises
    ------
    ValueError
        If the kernel is not 2-D, not square, has an even side, contains
        non-finite or negative values, or sums to zero.
    """
    k = np.array(kernel, dtype=np.float64, copy=True)
    if k.ndim != 2:
        raise ValueError(f"{name} kernel must be 2-D, got shape {k.shape}")
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} kernel must be square, got shape {k.shape}")
    if k.shape[0] % 2 == 0:
        raise ValueError(f"{name} kernel must have an odd side length, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{name} kernel contains NaN or inf values")
    if np.any(k < 0):
        raise ValueError(f"{name} kernel has negative values (min {k.min():.3g})")
    total = k.sum()
    if total <= 0:
        raise ValueError(f"{name} kernel sums to {total!r}; it must have positive total flux")
    return k / total


def _default_size(extent_pixels: float) -> int:
    return max(3, 2 * int(math.ceil(extent_pixels)) + 1)


def gaussian_psf(fwhm: float, pixel_scale: float, size: int | None = None) -> np.ndarray:
    """Pixel-integrated circular Gaussian PSF.

    Each pixel holds the Gaussian's exact integral over the pixel (error
    functions, separable), normalised to sum 1 over the kernel; this equals
    astropy's ``Gaussian2DKernel(mode="integrate")`` without needing astropy.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in arcsec (> 0).
    pixel_scale : float
        Pixel size in arcsec (> 0).
    size : int, optional
        Odd side length in pixels; default covers +-4 sigma (at least 3).

    Returns
    -------
    ndarray
        ``size x size`` float64 kernel summing to 1.
    """
    fwhm = positive_float("fwhm", fwhm)
    pixel_scale = positive_float("pixel_scale", pixel_scale)
    sigma = fwhm / FWHM_PER_SIGMA / pixel_scale
    size = _default_size(4.0 * sigma) if size is None else _odd_size(size)
    edges = (np.arange(size + 1) - size / 2.0) / (math.sqrt(2.0) * sigma)
    g = 0.5 * np.diff(erf(edges))
    return validate_kernel(np.outer(g, g), name="gaussian")


def airy_psf(fwhm: float, pixel_scale: float, size: int | None = None, oversample: int = 10) -> np.ndarray:
    """Airy-disk PSF of a circular unobstructed aperture (astropy ``AiryDisk2DKernel``).

    Parameters
    ----------
    fwhm : float
        Full width at half maximum of the core in arcsec (> 0); the first dark
        ring is at ``1.1853 fwhm``.
    pixel_scale : float
        Pixel size in arcsec (> 0).
    size : int, optional
        Odd side length in pixels; default reaches four times the first-zero radius.
    oversample : int
        Sub-pixel sampling per axis used to integrate over pixels.

    Returns
    -------
    ndarray
        ``size x size`` float64 kernel summing to 1.
    """
    from astropy.convolution import AiryDisk2DKernel

    fwhm = positive_float("fwhm", fwhm)
    pixel_scale = positive_float("pixel_scale", pixel_scale)
    oversample = int_at_least("oversample", oversample, 1)
    radius = AIRY_ZERO_PER_FWHM * fwhm / pixel_scale
    size = _default_size(4.0 * radius) if size is None else _odd_size(size)
    kern = AiryDisk2DKernel(radius, x_size=size, y_size=size, mode="oversample", factor=oversample)
    return validate_kernel(kern.array, name="airy")


def psf_from_fits(path: str | os.PathLike, hdu: int | str | None = None, clip_negative: bool = False) -> np.ndarray:
    """Read a PSF kernel from a FITS file (astropy.io.fits), validated and normalised.

    Parameters
    ----------
    path : str or PathLike
        FITS file, optionally ``file.fits[EXT]``.
    hdu : int or str, optional
        HDU index or name; default is the first HDU holding a 2-D image.
    clip_negative : bool
        Set negative pixels (noise in empirical PSFs) to zero instead of
        raising. A warning is logged with the clipped fraction of flux.

    Returns
    -------
    ndarray
        The kernel, float64, summing to 1. Its pixels must match the image grid's.
    """
    data = read_fits_image(path, hdu, name="PSF").data
    if clip_negative and np.all(np.isfinite(data)) and np.any(data < 0):
        neg = -data[data < 0].sum() / max(np.abs(data).sum(), np.finfo(float).tiny)
        log.warning("PSF %s: clipping negative pixels (%.3g of |flux|) to zero", os.fspath(path), neg)
        data = np.clip(data, 0.0, None)
    return validate_kernel(data, name=f"PSF from {os.fspath(path)!r}")


def _odd_size(size: int) -> int:
    size = int_at_least("size", size, 1)
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    return size
