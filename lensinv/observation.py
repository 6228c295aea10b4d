"""One record type for a (simulated or stored) lens observation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp

from .grids import ImageGrid, SourceGrid
from .mass import Lens
from .operator import LensOperator, operator


@dataclass(frozen=True, eq=False)
class Observation:
    """One lens observation with its truth: what :func:`lensinv.simulate.simulate` makes and
    :class:`lensinv.LensDataset` reads back.

    Attributes
    ----------
    index : int
        Global index (the lens's random stream).
    lens : Lens
    source : ndarray
        ``(n_src, n_src)`` float64 true source, peak 1.
    image : ndarray
        ``(n_img, n_img)`` float64 observed image ``F L s + noise``.
    sigma : float
        Noise standard deviation (0 for noise-free data), image units.
    psf : ndarray or None
        The PSF kernel.
    psf_fwhm : float
        Its FWHM in arcsec (0 without a PSF).
    snr : float
        Peak signal-to-noise of the lensed image (inf when noise-free).
    magnification : float
        Image flux over source flux.
    image_grid, source_grid : ImageGrid, SourceGrid
    supersample : int
    tries : int
        Draws the simulation needed to pass the magnification cut (1 where not recorded).
    stored_matrix : scipy.sparse.csr_matrix or None
        ``F L`` as stored in a data set (float32 values), when the file has operators.
    """

    index: int
    lens: Lens
    source: np.ndarray
    image: np.ndarray
    sigma: float
    psf: Optional[np.ndarray]
    psf_fwhm: float
    snr: float
    magnification: float
    image_grid: ImageGrid
    source_grid: SourceGrid
    supersample: int
    tries: int = 1
    stored_matrix: Optional[sp.csr_matrix] = None
    _operator: Optional[LensOperator] = field(default=None, repr=False)

    def operator(self) -> LensOperator:
        """The lens's forward operator (float64): the simulation's own, or rebuilt exactly from the
        stored parameters (then kept)."""
        if self._operator is None:
            op = operator(self.lens, self.image_grid, self.source_grid, psf=self.psf, supersample=self.supersample)
            object.__setattr__(self, "_operator", op)
        return self._operator

    @property
    def op(self) -> LensOperator:
        """Same as :meth:`operator`."""
        return self.operator()
