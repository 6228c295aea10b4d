"""lensinv: explicit sparse-matrix forward models of strong gravitational lenses.

An observation is ``d = F L s + n``: ``L`` ray traces the source grid through
the lens, ``F`` blurs with the PSF. See ``DESIGN.md`` for the conventions.
"""

from ._simd import prefer_wide_vectors

prefer_wide_vectors()  # before any kernel is compiled

from .grids import ImageGrid, SourceGrid  # noqa: E402
from .mass import EPL, SIE, ExternalShear, Lens, MassProfile, Shift  # noqa: E402
from .operator import DEFAULT_SUPERSAMPLE, LensOperator, lensing_matrix, operator, psf_matrix  # noqa: E402
from .dataset import LensDataset  # noqa: E402
from .observation import Observation  # noqa: E402
from .protocol import ObservationOperator  # noqa: E402
from .psf import airy_psf, gaussian_psf, psf_from_fits, validate_kernel  # noqa: E402
from .visibility import UVCoverage, VisibilityOperator, visibility_operator  # noqa: E402  (finufft: lazily)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SUPERSAMPLE", "EPL", "ExternalShear", "ImageGrid", "Lens", "LensDataset", "LensOperator", "MassProfile", "Observation", "ObservationOperator", "SIE", "Shift", "SourceGrid", "UVCoverage",
    "VisibilityOperator",
    "airy_psf", "gaussian_psf", "lensing_matrix", "operator", "psf_from_fits", "psf_matrix",
    "validate_kernel", "visibility_operator", "__version__",
]
