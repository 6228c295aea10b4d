"""Point-spread-function kernels: validation, Gaussian, Airy, and FITS files.

A kernel is a 2-D float64 array with an odd number of pixels per side, finite,
non-negative and normalised to sum 1, sampled on the image grid's pixels. The
PSF operator applies it with the ``scipy.signal.convolve2d(mode="same")``
convention.

Kernels are at most :data:`MAX_KERNEL_SIZE` (1025) pixels per side: a larger one
(8 MiB and up, applied to every image pixel) is almost always a unit mistake,
such as a FWHM in milliarcsec or pixels given as arcsec, so it is refused.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import numpy as np
from scipy.special import erf

from .validate import int_at_least, positive_float
from .io import read_fits_image

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Airy pattern (2 J1(x) / x)^2: half maximum at x = 1.6163, first zero at x = 3.8317
AIRY_ZERO_PER_FWHM = 3.8317059702075125 / (2.0 * 1.616339948310703)
#: Largest kernel side (pixels) that ``gaussian_psf`` and ``airy_psf`` build, by default or on request.
MAX_KERNEL_SIZE = 1025


def validate_kernel(kernel: np.ndarray, name: str = "psf") -> np.ndarray:
    """Check a PSF kernel and return a normalised float64 copy.

    Parameters
    ----------
    kernel : array_like
        2-D kernel of real numbers (any positive scale; relative flux per pixel).
    name : str
        What the kernel is, for error messages.

    Returns
    -------
    ndarray
        float64 copy summing to 1.

    Raises
    ------
    ValueError
        If the kernel is not an array of real numbers (strings, objects, complex
        values), is not 2-D, not square, has an even side, contains non-finite or
        negative values, or sums to zero.
    """
    raw = np.asarray(kernel)
    if np.iscomplexobj(raw):
        raise ValueError(f"{name} kernel must be real, got a complex array (the imaginary part would be dropped)")
    try:
        k = np.array(raw, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise ValueError(f"{name} kernel must be an array of real numbers, got {type(kernel).__name__} "
                         f"of dtype {raw.dtype}") from None
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
    peak = k.max() if k.size else 0.0
    if peak > 0:
        k /= peak  # so that the sum cannot overflow (values near 1e308) or lose subnormal precision
    total = k.sum()
    if total <= 0:
        raise ValueError(f"{name} kernel sums to {total!r}; it must have positive total flux")
    return k / total


def _kernel_size(size: int | None, extent_pixels: float, fwhm: float, pixel_scale: float, what: str) -> int:
    """The kernel side: ``size`` checked, or the default covering ``extent_pixels`` (radius, pixels).

    Raises ``ValueError`` naming fwhm/pixel_scale when the default would exceed :data:`MAX_KERNEL_SIZE`.
    """
    if size is not None:
        return _odd_size(size)
    # compare as floats first: fwhm / pixel_scale may overflow to inf
    if not extent_pixels <= (MAX_KERNEL_SIZE - 1) / 2:
        need = "more than 1e18" if not extent_pixels < 1e18 else str(2 * int(math.ceil(extent_pixels)) + 1)
        raise ValueError(
            f"fwhm={fwhm!r} arcsec at pixel_scale={pixel_scale!r} arcsec needs a kernel of {need} pixels per side "
            f"(default: {what}); at most {MAX_KERNEL_SIZE} are built. Check the units of fwhm and pixel_scale "
            f"(both arcsec), or pass an odd size <= {MAX_KERNEL_SIZE} to truncate the kernel")
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
        Odd side length in pixels, at most :data:`MAX_KERNEL_SIZE` (1025); default covers
        +-4 sigma (at least 3).

    Returns
    -------
    ndarray
        ``size x size`` float64 kernel summing to 1.

    Raises
    ------
    ValueError
        ``fwhm`` or ``pixel_scale`` not finite and > 0; ``size`` not an odd integer in
        ``[1, 1025]``; or, without ``size``, a default kernel wider than 1025 pixels
        (``4 * fwhm / 2.3548 > 512 * pixel_scale``, e.g. ``gaussian_psf(100, 0.04)``).
    """
    fwhm = positive_float("fwhm", fwhm)
    pixel_scale = positive_float("pixel_scale", pixel_scale)
    sigma = fwhm / FWHM_PER_SIGMA / pixel_scale
    size = _kernel_size(size, 4.0 * sigma, fwhm, pixel_scale, "+-4 sigma")
    with np.errstate(divide="ignore", over="ignore"):  # sigma far below a pixel: edges at +-inf, a delta
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
        Odd side length in pixels, at most :data:`MAX_KERNEL_SIZE` (1025); default reaches
        four times the first-zero radius (at least 3).
    oversample : int
        Sub-pixel sampling per axis used to integrate over pixels (>= 1, and
        ``size * oversample <= 10250``).

    Returns
    -------
    ndarray
        ``size x size`` float64 kernel summing to 1.

    Raises
    ------
    ValueError
        ``fwhm`` or ``pixel_scale`` not finite and > 0; ``size`` not an odd integer in
        ``[1, 1025]``; without ``size``, a default kernel wider than 1025 pixels
        (``4 * 1.1853 * fwhm > 512 * pixel_scale``); or a core so far below a pixel
        (``fwhm / pixel_scale`` below about 1e-150) that the sampled kernel has no flux.
    """
    from astropy.convolution import AiryDisk2DKernel
    from astropy.utils.exceptions import AstropyUserWarning

    fwhm = positive_float("fwhm", fwhm)
    pixel_scale = positive_float("pixel_scale", pixel_scale)
    oversample = int_at_least("oversample", oversample, 1)
    radius = AIRY_ZERO_PER_FWHM * fwhm / pixel_scale
    size = _kernel_size(size, 4.0 * radius, fwhm, pixel_scale, "four first-zero radii")
    if size * oversample > MAX_KERNEL_SIZE * 10:
        raise ValueError(f"oversample={oversample} with a {size}-pixel kernel samples {size * oversample} points per "
                         f"side; at most {MAX_KERNEL_SIZE * 10} are sampled, so oversample must be "
                         f"<= {MAX_KERNEL_SIZE * 10 // size}")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)  # "cannot be normalized": refused below, by name
        arr = AiryDisk2DKernel(radius, x_size=size, y_size=size, mode="oversample", factor=oversample).array
    if not (np.all(np.isfinite(arr)) and arr.sum() > 0):
        raise ValueError(f"airy_psf: fwhm={fwhm!r} arcsec is too small for pixel_scale={pixel_scale!r} arcsec "
                         f"(core radius {radius:.3g} pixels): the sampled kernel has no finite flux")
    return validate_kernel(arr, name="airy")


def psf_from_fits(path: str | os.PathLike, hdu: int | str | None = None, clip_negative: bool = False) -> np.ndarray:
    """Read a PSF kernel from a FITS file (astropy.io.fits), validated and normalised.

    Parameters
    ----------
    path : str or PathLike
        FITS file, optionally ``file.fits[EXT]``.
    hdu : int or str, optional
        HDU index or name; default is the first HDU holding a 2-D image. An index or
        name the file does not have raises ``ValueError`` listing the HDUs it has.
    clip_negative : bool
        Set negative pixels (noise in empirical PSFs) to zero instead of
        raising. A warning is logged with the clipped fraction of flux.

    Returns
    -------
    ndarray
        The kernel, float64, summing to 1. Its pixels must match the image grid's.

    Raises
    ------
    ValueError
        A missing file, a directory, an HDU the file does not have, a file that is not FITS,
        no 2-D image, or an invalid kernel (see :func:`validate_kernel`).
    """
    if hdu is not None and (isinstance(hdu, (bool, np.bool_)) or not isinstance(hdu, (int, np.integer, str))):
        raise ValueError(f"hdu must be an HDU index (int) or name (str), got {hdu!r}")
    data = read_fits_image(path, int(hdu) if isinstance(hdu, np.integer) else hdu, name="PSF").data
    if clip_negative and np.all(np.isfinite(data)) and np.any(data < 0):
        neg = negative_flux_fraction(data)
        log.warning("PSF %s: clipping negative pixels (%.3g of |flux|) to zero", os.fspath(path), neg)
        data = np.clip(data, 0.0, None)
    return validate_kernel(data, name=f"PSF from {os.fspath(path)!r}")


def _odd_size(size: int) -> int:
    size = int_at_least("size", size, 1)
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"size must be an odd integer <= {MAX_KERNEL_SIZE} (pixels per side), got {size}")
    return size


def negative_flux_fraction(kernel: np.ndarray) -> float:
    """The fraction of a kernel's absolute flux in its negative pixels (0 for none)."""
    k = np.asarray(kernel, dtype=np.float64)
    return float(-k[k < 0].sum() / max(np.abs(k).sum(), np.finfo(float).tiny))


def kernel_fwhm(kernel: np.ndarray) -> float:
    """FWHM (pixels) of the circular Gaussian with the kernel's second moment (at least 1 pixel).

    For a pixel-integrated Gaussian this is its FWHM with the pixel's own width added in
    quadrature (variance + 1/12 pixel^2); for an Airy core or a measured PSF, the second moment
    weighs the wings, so it is an upper estimate of the core's width.
    """
    k = validate_kernel(kernel)
    ax = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    var = float(np.sum(k * (ax[None, :] ** 2 + ax[:, None] ** 2)) / 2)
    return max(2.3548 * math.sqrt(max(var, 1e-12)), 1.0)
