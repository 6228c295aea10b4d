"""Cholesky factorisations of ``A = M^T C^-1 M + lam H`` for many ``lam``: CHOLMOD or SciPy.

- ``cholmod`` (scikit-sparse): supernodal sparse Cholesky; the symbolic
  analysis (fill-reducing ordering) is done once and reused for every ``lam``.
- ``dense`` (SciPy/LAPACK): for small or dense systems, where it is faster.
- ``splu`` (SciPy SuperLU): the sparse fallback when scikit-sparse is missing.

All three give ``log det A`` and solves; tests check that they agree.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg

log = logging.getLogger(__name__)

try:  # optional: scikit-sparse's CHOLMOD
    from sksparse import cholmod as _cholmod
except ImportError:  # pragma: no cover - depends on the installation
    _cholmod = None

BACKENDS = ("auto", "cholmod", "dense", "splu")
_warned = [False]


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """``M^T C^-1 M + lam H`` could not be factorised: it is not (numerically) positive definite."""


def have_cholmod() -> bool:
    return _cholmod is not None


def choose_backend(backend: str, n: int, nnz_bound: int) -> str:
    """Resolve ``"auto"``: dense LAPACK for small systems or when ``M^T C^-1 M`` may be dense
    (``nnz_bound``, an upper bound on its non-zeros, above 5% of ``n^2``), else CHOLMOD
    (SuperLU, with a logged warning, where scikit-sparse is missing)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cholmod" and _cholmod is None:
        raise ValueError("backend='cholmod' needs scikit-sparse, which is not installed")
    if backend != "auto":
        return backend
    if n <= 1000 or nnz_bound > 0.05 * n * n:
        return "dense"
    if _cholmod is not None:
        return "cholmod"
    _warn_no_cholmod()
    return "dense" if n <= 6000 else "splu"


def _warn_no_cholmod() -> None:
    if not _warned[0]:
        log.warning("scikit-sparse (CHOLMOD) is not installed: using SciPy's slower solvers "
                    "(pip install 'scikit-sparse<0.5' with libsuitesparse-dev)")
        _warned[0] = True


class Factorization:
    """Factorise ``P + lam Q`` for successive ``lam`` (P dense or sparse symmetric, Q sparse symmetric).

    ``backend`` is ``"cholmod"`` (symbolic analysis once, numeric factorisation per
    ``lam``), ``"dense"`` (LAPACK) or ``"splu"`` (SuperLU).
    """

    def __init__(self, P, Q: sp.spmatrix, backend: str) -> None:
        if backend not in ("cholmod", "dense", "splu"):
            raise ValueError(f"unresolved backend {backend!r}")
        self.backend = backend
        self.n = P.shape[0]
        self.Q = Q.tocsc()
        self._symbolic = None
        if backend == "dense":
            # Fortran order, so LAPACK factorises a copy in place; Q is added on its sparse pattern only
            pd = P if isinstance(P, np.ndarray) else P.toarray()
            # P is symmetric: the transpose of a C-ordered array is the same matrix in Fortran order, no copy
            self.P = pd.T if pd.flags.c_contiguous else np.asfortranarray(pd)
            q = self.Q.tocoo()
            self._q = (q.row, q.col, q.data)
        else:
            self.P = (sp.csc_matrix(P) if isinstance(P, np.ndarray) else P).tocsc()
            if backend == "cholmod":
                self._symbolic = _cholmod.analyze((abs(self.P) + abs(self.Q)).tocsc(), mode="supernodal")
        self.lam: Optional[float] = None
        self._f = None

    def factor(self, lam: float) -> "Factorization":
        """Factorise ``P + lam Q``; raises :class:`NotPositiveDefiniteError` if that fails."""
        self.lam = lam
        try:
            if self.backend == "cholmod":
                self._f = self._symbolic.cholesky(self.P + lam * self.Q)
            elif self.backend == "dense":
                a = np.array(self.P, order="F")
                rows, cols, vals = self._q
                np.add.at(a, (rows, cols), lam * vals)
                self._f = scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
            else:
                self._f = scipy.sparse.linalg.splu((self.P + lam * self.Q).tocsc(), permc_spec="MMD_AT_PLUS_A",
                                                   diag_pivot_thresh=0.0, options={"SymmetricMode": True})
                d = self._f.U.diagonal()
                if np.any(d <= 0) or not np.all(np.isfinite(d)):
                    raise np.linalg.LinAlgError("non-positive pivot")
        except (np.linalg.LinAlgError, RuntimeError) as exc:
            raise NotPositiveDefiniteError(
                f"M^T C^-1 M + lam H is not positive definite at lam = {lam:.6g} ({exc}); "
                "check the noise map, the mask and the operator") from exc
        except Exception as exc:  # CHOLMOD's own error type
            if _cholmod is not None and isinstance(exc, _cholmod.CholmodError):
                raise NotPositiveDefiniteError(
                    f"M^T C^-1 M + lam H is not positive definite at lam = {lam:.6g} ({exc})") from exc
            raise
        return self

    def logdet(self) -> float:
        if self.backend == "cholmod":
            return float(self._f.logdet())
        if self.backend == "dense":
            return float(2.0 * np.sum(np.log(np.diag(self._f[0]))))
        return float(np.sum(np.log(self._f.U.diagonal())))

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self.backend == "cholmod":
            return self._f(b)
        if self.backend == "dense":
            return scipy.linalg.cho_solve(self._f, b, check_finite=False)
        return self._f.solve(b)

    def inverse_diagonal(self) -> np.ndarray:
        """``diag(A^-1)`` (the posterior variances), by solving against the identity in blocks."""
        out = np.empty(self.n)
        block = 512
        for lo in range(0, self.n, block):
            hi = min(self.n, lo + block)
            e = np.zeros((self.n, hi - lo))
            e[np.arange(lo, hi), np.arange(hi - lo)] = 1.0
            out[lo:hi] = self.solve(e)[np.arange(lo, hi), np.arange(hi - lo)]
        return out


def logdet_spd(H: sp.spmatrix) -> float:
    """``log det`` of a sparse symmetric positive definite matrix (CHOLMOD, else SuperLU)."""
    f = Factorization(H, sp.csc_matrix(H.shape), backend="cholmod" if _cholmod is not None else "splu")
    return f.factor(0.0).logdet()
