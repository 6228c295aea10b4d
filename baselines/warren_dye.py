"""The noise level and pixel mask a Warren-Dye inversion of a simulated lens is run with.

One rule, shared by the scripts that compare the inversion with the RIM
(``compare_baselines.py``, ``lens_error_sensitivity.py``), so that they cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .masks import arc_mask

#: noise-free data (sigma 0) are inverted with this fraction of the image's peak as sigma
NOMINAL_NOISE_FRACTION = 1e-3


@dataclass(frozen=True)
class WarrenDyeSetup:
    """Inputs of a Warren-Dye inversion.

    Attributes
    ----------
    sigma : float
        Noise standard deviation to invert with (image units, > 0).
    mask : ndarray of bool or None
        Image pixels to use; None for all pixels.
    """

    sigma: float
    mask: Optional[np.ndarray]


def warren_dye_setup(image: np.ndarray, sigma: float, *, mask: bool = True) -> WarrenDyeSetup:
    """The noise level and arc mask for a Warren-Dye inversion of ``image``.

    Noise-free data (``sigma == 0``) get a nominal noise level of
    ``NOMINAL_NOISE_FRACTION`` (1e-3) times the image's peak, since the evidence needs one.
    With ``mask=True`` the data-driven :func:`baselines.arc_mask` at that noise level is
    used, or all pixels (None) when it would keep none.

    Parameters
    ----------
    image : ndarray
        Observed image (2-D, finite), in the source's brightness units.
    sigma : float
        Noise standard deviation of the data (image units, >= 0; 0 for noise-free data).
    mask : bool
        Compute the arc mask (True) or use all pixels (False).

    Returns
    -------
    WarrenDyeSetup

    Raises
    ------
    ValueError
        ``image`` is not a finite 2-D array, ``sigma`` is negative or not finite, or the data
        are noise-free and the image has no positive pixel to set a nominal noise level by.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf values")
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise ValueError(f"sigma must be a number, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    if sigma == 0:
        peak = float(np.max(img)) if img.size else 0.0
        if not peak > 0:
            raise ValueError("noise-free data (sigma 0) need an image with a positive peak to set a nominal noise "
                             f"level, got peak {peak!r}")
        sigma = NOMINAL_NOISE_FRACTION * peak
    keep = None
    if mask:
        m = arc_mask(img, sigma)
        keep = m if m.any() else None
    return WarrenDyeSetup(sigma=sigma, mask=keep)
