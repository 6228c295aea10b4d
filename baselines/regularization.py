"""Regularization matrices H on a source grid (Warren & Dye 2003; Suyu et al. 2006).

``E_S(s) = s^T H s / 2`` penalises the source's brightness (``zeroth``), its
first differences (``gradient``) or its second differences (``curvature``)
along rows and columns. Pixels beyond the grid's edge count as zero, as in
Suyu et al. (2006): a source is expected to fade before the edge of its grid,
and this makes every H symmetric positive definite, so the prior is proper
and the Bayesian evidence well defined. Inside the grid the gradient form
vanishes on constant sources and the curvature form on planes
(``a + b x + c y + d x y``); only the edge terms penalise them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

FORMS = ("zeroth", "gradient", "curvature")


def _second_difference(n: int) -> sp.csr_matrix:
    """``tridiag(-1, 2, -1)``: first differences with zeros beyond both ends, squared (``D^T D``)."""
    return sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")


def regularization_matrix(form: str, n: int) -> sp.csr_matrix:
    """H for an ``n x n`` source grid (row-major pixels), float64 CSR, symmetric positive definite.

    Parameters
    ----------
    form : {"zeroth", "gradient", "curvature"}
    n : int
        Pixels per side.
    """
    if form not in FORMS:
        raise ValueError(f"regularization must be one of {', '.join(FORMS)}, got {form!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n!r}")
    eye = sp.identity(n, format="csr")
    if form == "zeroth":
        return sp.identity(n * n, format="csr")
    t = _second_difference(n)
    if form == "curvature":
        t = (t @ t).tocsr()  # squared second differences: (D2^T D2) with D2 = t
    h = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
    h.sort_indices()
    return h


def log_det_exact(form: str, n: int) -> float:
    """``log det H`` of the full grid from the eigenvalues of its Kronecker factors (for tests)."""
    if form == "zeroth":
        return 0.0
    k = np.arange(1, n + 1)
    mu = 4.0 * np.sin(np.pi * k / (2.0 * (n + 1))) ** 2  # eigenvalues of tridiag(-1, 2, -1)
    if form == "curvature":
        mu = mu**2
    return float(np.sum(np.log(mu[:, None] + mu[None, :])))
