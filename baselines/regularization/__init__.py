"""Regularizations ``H`` on a source grid (Warren & Dye 2003; Suyu et al. 2006), one per file.

``E_S(s) = s^T H s / 2`` penalises the source's brightness (``zeroth``), its first differences
(``gradient``) or its second differences (``curvature``) along rows and columns. Pixels beyond
the grid's edge count as zero, as in Suyu et al. (2006): a source is expected to fade before the
edge of its grid, and this makes every H symmetric positive definite, so the prior is proper and
the Bayesian evidence well defined. Inside the grid the gradient form vanishes on constant
sources and the curvature form on planes; only the edge terms penalise them.

A new form is one class (see :class:`Regularization`), registered with ``@register`` or passed
as an instance.
"""

from .base import Regularization, forms, get_regularization, register
from .curvature import Curvature
from .gradient import Gradient
from .zeroth import Zeroth

FORMS = forms()


def regularization_matrix(form, n: int):
    """``H`` of a registered form (or a :class:`Regularization`) for an ``n x n`` grid."""
    return get_regularization(form).matrix(n)


def log_det_exact(form, n: int) -> float:
    """Exact ``log det H`` of the full grid (the built-in forms: from their Kronecker factors)."""
    value = get_regularization(form).log_det(n)
    if value is None:
        raise ValueError(f"{form!r} has no exact log det")
    return value


__all__ = ["Curvature", "FORMS", "Gradient", "Regularization", "Zeroth", "forms", "get_regularization",
           "log_det_exact", "register", "regularization_matrix"]
