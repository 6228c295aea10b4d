"""One record type for a (simulated or stored) lens observation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp

from .grids import ImageGrid, SourceGrid
from .mass import Lens
from .operator import LensOperator, operator
from .visibility import DirtyImage, UVCoverage, VisibilityOperator, visibility_operator


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
        ``(n_img, n_img)`` float64 observed image ``F L s + noise``; for interferometric data the
        natural-weighted dirty image of :attr:`visibilities` (:meth:`lensinv.VisibilityOperator.dirty`).
    sigma : float
        Noise standard deviation (0 for noise-free data), image units; for interferometric data
        per real and per imaginary part of each visibility.
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
    visibilities : ndarray or None
        Interferometric data: ``(n_vis,)`` complex visibilities ``A pb L s + noise`` (the source's
        unit times pixels), else None.
    coverage : UVCoverage or None
        Their baselines (wavelengths; shared by the lenses of a data set, with its beam cache).
    primary_beam : ndarray or None
        Flat ``n_img^2`` primary-beam response of the visibilities (None: 1).
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
    visibilities: Optional[np.ndarray] = field(default=None, repr=False)
    coverage: Optional[UVCoverage] = field(default=None, repr=False)
    primary_beam: Optional[np.ndarray] = field(default=None, repr=False)
    _operator: Optional[Any] = field(default=None, repr=False)

    def operator(self) -> Union[LensOperator, VisibilityOperator]:
        """The lens's forward operator (float64): the simulation's own, or rebuilt exactly from the
        stored parameters (then kept); a :class:`lensinv.VisibilityOperator` for interferometric data."""
        if self._operator is None:
            if self.coverage is not None:
                op = visibility_operator(self.lens, self.coverage, self.image_grid, self.source_grid,
                                         supersample=self.supersample, primary_beam=self.primary_beam)
            else:
                op = operator(self.lens, self.image_grid, self.source_grid, psf=self.psf, supersample=self.supersample)
            object.__setattr__(self, "_operator", op)
        return self._operator

    @property
    def op(self) -> Union[LensOperator, VisibilityOperator]:
        """Same as :meth:`operator`."""
        return self.operator()

    @property
    def data(self) -> np.ndarray:
        """What a solver reconstructs from: :attr:`visibilities` where present, else :attr:`image`."""
        return self.image if self.visibilities is None else self.visibilities

    def dirty(self) -> DirtyImage:
        """Interferometric data: the dirty image (:attr:`image`), beam and dirty-image noise of the
        visibilities (as :meth:`lensinv.VisibilityOperator.dirty`, without a NUFFT: the beam is the
        coverage's, cached). Raises ValueError for imaging data."""
        if self.coverage is None:
            raise ValueError("dirty() is for interferometric observations; this one is an image")
        n_vis = self.coverage.n_vis
        beam = self.coverage.beam(np.ones(n_vis), self.image_grid) / n_vis
        beam.flags.writeable = False
        return DirtyImage(image=self.image, beam=beam, sigma=self.sigma / float(np.sqrt(n_vis)))
