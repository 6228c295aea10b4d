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
