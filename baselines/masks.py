"""Image masks for inversions: keep the pixels that hold the lensed emission."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def arc_mask(image: np.ndarray, sigma, nsigma: float = 3.0, smooth: float = 1.5, grow: int = 3) -> np.ndarray:
    """Pixels with significant emission, from the data alone.

    The image is smoothed with a Gaussian of ``smooth`` pixels; pixels above
    ``nsigma`` times the noise of the smoothed image are kept, and the mask is
    grown by ``grow`` pixels (a square structuring element) so that the arcs'
    faint edges and the PSF wings are included.

    Parameters
    ----------
    image : ndarray
        Observed image (2-D).
    sigma : float or ndarray
        Noise standard deviation (scalar or per-pixel map).
    nsigma : float
        Detection threshold in units of the smoothed noise.
    smooth : float
        Gaussian smoothing width in pixels (0 for none).
    grow : int
        Dilation in pixels.

    Returns
    -------
    ndarray of bool
        True where the pixel is used.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf values")
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), img.shape)
    if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError("sigma must be finite and > 0")
    if smooth > 0:
        sm = ndimage.gaussian_filter(img, smooth, mode="constant")
        # noise of the smoothed image: sigma times the L2 norm of the smoothing kernel
        delta = np.zeros((int(8 * smooth) | 1,) * 2)
        delta[delta.shape[0] // 2, delta.shape[1] // 2] = 1.0
        noise = sig * np.sqrt(np.sum(ndimage.gaussian_filter(delta, smooth, mode="constant") ** 2))
    else:
        sm, noise = img, sig
    mask = sm > nsigma * noise
    if grow > 0:
        mask = ndimage.binary_dilation(mask, structure=np.ones((2 * grow + 1, 2 * grow + 1), bool))
    return mask
