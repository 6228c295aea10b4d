"""lensinv: explicit sparse-matrix forward models of strong gravitational lenses.

An observation is ``d = F L s + n``: ``L`` ray traces the source grid through
the lens, ``F`` blurs with the PSF. See ``DESIGN.md`` for the conventions.
"""

from .grids import ImageGrid, SourceGrid
from .mass import SIE, ExternalShear, Lens
from .operator import DEFAULT_SUPERSAMPLE, LensOperator, lensing_matrix, operator, psf_matrix
from .psf import airy_psf, gaussian_psf, psf_from_fits, validate_kernel

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SUPERSAMPLE", "ExternalShear", "ImageGrid", "Lens", "LensOperator", "SIE", "SourceGrid",
    "airy_psf", "gaussian_psf", "lensing_matrix", "operator", "psf_from_fits", "psf_matrix",
    "validate_kernel", "__version__",
]
