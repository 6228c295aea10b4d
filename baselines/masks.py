"""Image masks for inversions: keep the pixels that hold the lensed emission."""

from __future__ import annotations

from typing import Union

import numpy as np
from scipy import ndimage

from lensinv.validate import finite_float, int_at_least, positive_float, real_array


def arc_mask(image: np.ndarray, sigma: Union[float, np.ndarray], nsigma: float = 3.0, smooth: float = 1.5,
             grow: int = 3) -> np.ndarray:
    """Pixels with significant emission, from the data alone.

    The image is smoothed with a Gaussian of ``smooth`` pixels; pixels above
    ``nsigma`` times the noise of the smoothed image are kept, and the mask is
    grown by ``grow`` pixels (a square structuring element) so that the arcs'
    faint edges and the PSF wings are included.

    Parameters
    ----------
    image : ndarray
        Observed image (2-D, finite), in any brightness units.
    sigma : float or ndarray
        Noise standard deviation (finite, > 0), in the image's units: a scalar or a
        per-pixel map of the image's shape.
    nsigma : float
        Detection threshold in units of the smoothed noise (finite, >= 0).
    smooth : float
        Gaussian smoothing width in pixels (finite, >= 0; 0 for none), at most the
        image's larger side.
    grow : int
        Dilation in pixels (an integer >= 0).

    Returns
    -------
    ndarray of bool
        True where the pixel is used.

    Raises
    ------
    ValueError
        Naming the argument: an image that is not a non-empty 2-D array of finite real
        numbers; a sigma that is not finite and > 0 or whose shape is not the image's;
        ``nsigma`` or ``smooth`` not finite or negative, ``smooth`` wider than the image;
        ``grow`` not an integer >= 0.
    """
    img = real_array("image", image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {img.shape}")
    if np.ndim(sigma) == 0:
        sig = np.full(img.shape, positive_float("sigma", sigma.item() if isinstance(sigma, np.ndarray) else sigma))
    else:
        sig = real_array("sigma", sigma)
        if sig.shape != img.shape:
            raise ValueError(f"sigma must be a scalar or a map of the image's shape {img.shape}, got shape {sig.shape}")
        if np.any(sig <= 0):
            raise ValueError("sigma must be finite and > 0 everywhere")
    nsigma = finite_float("nsigma", nsigma)
    if nsigma < 0:
        raise ValueError(f"nsigma must be >= 0, got {nsigma!r}")
    smooth = finite_float("smooth", smooth)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 (pixels), got {smooth!r}")
    if smooth > max(img.shape):
        raise ValueError(f"smooth must be at most the image's larger side ({max(img.shape)} pixels), got {smooth!r}")
    grow = int_at_least("grow", grow, 0)
    if smooth > 0:
        sm = ndimage.gaussian_filter(img, smooth, mode="constant")
        # noise of the smoothed image: sigma times the L2 norm of the (separable) smoothing kernel
        delta = np.zeros(int(8 * smooth) | 1)
        delta[delta.size // 2] = 1.0
        noise = sig * np.sum(ndimage.gaussian_filter1d(delta, smooth, mode="constant") ** 2)
    else:
        sm, noise = img, sig
    mask = sm > nsigma * noise
    # a square of side 2 * max(shape) + 1 already reaches every pixel from any one: the same mask
    grow = min(grow, max(img.shape))
    if grow > 0:
        mask = ndimage.binary_dilation(mask, structure=np.ones((2 * grow + 1, 2 * grow + 1), bool))
    return mask


def sky_offsets(shape: tuple[int, int], pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets ``(x, y)`` (arcsec) from the image's centre, each of ``shape``.

    ``x`` grows along columns (axis 1), ``y`` along rows (axis 0), as for :class:`lensinv.ImageGrid`
    (whose centre is the image's centre, also for an even side); ``shape`` may be non-square.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive pixel counts, got {shape!r}")
    d = positive_float("pixel_scale", pixel_scale)
    ny, nx = (int(s) for s in shape)
    x = (np.arange(nx) - (nx - 1) / 2.0) * d
    y = (np.arange(ny) - (ny - 1) / 2.0) * d
    return np.meshgrid(x, y, indexing="xy")


def region_mask(shape: tuple[int, int], pixel_scale: float, *, circles: tuple = (),
                annulus: Union[tuple, None] = None) -> np.ndarray:
    """Pixels to use (True) after masking discs (interlopers) and keeping an annulus.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    pixel_scale : float
        Arcsec per pixel (> 0).
    circles : sequence of (x, y, r)
        Discs to mask: centre (arcsec from the image's centre, ``x`` along columns, ``y`` along
        rows) and radius (arcsec, > 0). A pixel is masked where its centre lies within ``r``.
    annulus : (r_in, r_out), optional
        Keep only pixels whose centre lies at ``r_in <= r < r_out`` arcsec from the image's centre
        (``0 <= r_in < r_out``).

    Returns
    -------
    ndarray of bool
        ``shape``; True where the pixel is used.
    """
    x, y = sky_offsets(shape, pixel_scale)
    use = np.ones(x.shape, dtype=bool)
    for k, c in enumerate(circles):
        if len(c) != 3:
            raise ValueError(f"circles[{k}] must be (x, y, r) in arcsec, got {c!r}")
        cx, cy = finite_float(f"circles[{k}] x", c[0]), finite_float(f"circles[{k}] y", c[1])
        r = positive_float(f"circles[{k}] r", c[2])
        use &= np.hypot(x - cx, y - cy) > r
    if annulus is not None:
        if len(annulus) != 2:
            raise ValueError(f"annulus must be (r_in, r_out) in arcsec, got {annulus!r}")
        r_in, r_out = finite_float("annulus r_in", annulus[0]), finite_float("annulus r_out", annulus[1])
        if not 0 <= r_in < r_out:
            raise ValueError(f"annulus must satisfy 0 <= r_in < r_out (arcsec), got {annulus!r}")
        r = np.hypot(x, y)
        use &= (r >= r_in) & (r < r_out)
    return use
