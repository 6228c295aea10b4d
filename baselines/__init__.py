"""baselines: regularized semilinear inversion (Warren & Dye 2003) with the regularization
strength set by the Bayesian evidence (Suyu et al. 2006).

Imports :mod:`lensinv` only.

>>> result = baselines.invert(op, image, sigma)            # lam by maximum evidence
>>> result.source, result.lam, result.log_evidence, result.chi2
"""

from .inversion import InversionResult, invert
from .masks import arc_mask
from .regularization import FORMS, regularization_matrix
from .solvers import NotPositiveDefiniteError, have_cholmod
from .warren_dye import warren_dye_setup

__all__ = ["FORMS", "InversionResult", "arc_mask", "NotPositiveDefiniteError", "have_cholmod", "invert", "regularization_matrix"]
__all__ += ["warren_dye_setup"]
