"""baselines: regularized semilinear inversion (Warren & Dye 2003) with the regularization
strength set by the Bayesian evidence (Suyu et al. 2006).

Imports :mod:`lensinv` only. Any observation operator works (DESIGN.md).

>>> result = baselines.invert(op, image, sigma)            # lam by maximum evidence
>>> result.source, result.lam, result.log_evidence, result.chi2

The pieces ``invert`` composes are public too: :func:`normal_equations`,
:func:`restricted_prior`, :func:`search_evidence`; and regularizations are small classes
(:class:`Regularization`), so a new form is one class.

:func:`fit_lens` fits the lens model itself (SIE or EPL, shear, optional lens light) by
maximising the same evidence over the lens parameters (:mod:`baselines.lens_fit`), and, on
request, samples their posterior with emcee (:func:`sample_posterior`, :mod:`baselines.posterior`).
"""

from .evidence import EvidenceSearch, Prior, restricted_prior, search_evidence
from .inversion import SELECTIONS, InversionResult, invert, invert_by_evidence
from .lens_fit import (FitConfig, FitProgress, LensFit, LightFit, MGELight, annular_mask, bad_pixel_mask, fit_lens,
                       fit_light)
from .masks import arc_mask, region_mask, sky_offsets
from .normal_equations import NormalEquations, normal_equations
from .posterior import PosteriorSamples, sample_posterior
from .regularization import FORMS, Curvature, Gradient, Regularization, Zeroth, regularization_matrix
from .solvers import NotPositiveDefiniteError, have_cholmod
from .warren_dye import warren_dye_setup

__all__ = ["Curvature", "EvidenceSearch", "FORMS", "FitConfig", "FitProgress", "Gradient", "InversionResult",
           "LensFit", "LightFit", "MGELight", "NormalEquations", "NotPositiveDefiniteError", "PosteriorSamples", "Prior",
           "Regularization", "SELECTIONS",
           "Zeroth",
           "annular_mask", "arc_mask", "bad_pixel_mask", "fit_lens", "fit_light", "have_cholmod", "invert", "invert_by_evidence",
           "normal_equations", "region_mask", "regularization_matrix", "restricted_prior", "sample_posterior",
           "search_evidence",
           "sky_offsets", "warren_dye_setup"]
