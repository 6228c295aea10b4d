"""Cholesky factorisations of ``A = M^T C^-1 M + lam H`` for many ``lam``: CHOLMOD or SciPy.

- ``cholmod`` (scikit-sparse): supernodal sparse Cholesky; the symbolic
  analysis (fill-reducing ordering) is done once and reused for every ``lam``.
- ``dense`` (SciPy/LAPACK): for small or dense systems, where it is faster.
- ``splu`` (SciPy SuperLU): the sparse fallback when scikit-sparse is missing.

All three give ``log det A`` and solves; tests check that they agree.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
import scipy.linalg.blas
import scipy.linalg.lapack

from ._kernels import restore_upper, scale_lower_f32

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
    """Factorise ``A = P + lam Q`` for successive ``lam`` (P dense or sparse symmetric, Q sparse symmetric).

    ``backend`` is ``"cholmod"`` (symbolic analysis once, numeric factorisation per
    ``lam``), ``"dense"`` (LAPACK) or ``"splu"`` (SuperLU). A dense ``P`` may hold
    the matrix in its upper triangle only (``P[i, j]`` for ``j >= i``; the rest is
    ignored), as :mod:`baselines._kernels` writes it.

    The dense backend also factorises in single precision (``factor(lam,
    single=True)``), about twice as fast, for locating the evidence maximum: the
    matrix is scaled to a diagonal of ``2^100`` first, and entries below ``1e-8`` of the
    diagonal (far below single precision's resolution of it) are dropped. Both keep single precision's subnormal range (below ``1.2e-38``)
    out of the factorisation, where the fill-in decays over many orders of magnitude:
    subnormal arithmetic made it up to 2.4 times slower on some lenses (measured,
    4096 unknowns; scaled to unit diagonal instead, 130-150 ms became 230-320 ms).
    Solves are then refined against the double-precision matrix to double precision;
    ``log det A`` is good to about ``1e-4`` (measured on 4096 unknowns). Every buffer
    is allocated once.
    """

    def __init__(self, P, Q: sp.spmatrix, backend: str) -> None:
        if backend not in ("cholmod", "dense", "splu"):
            raise ValueError(f"unresolved backend {backend!r}")
        self.backend = backend
        self.n = P.shape[0]
        self.Q = Q.tocsc()
        self._symbolic = None
        if backend == "dense":
            pd = P if isinstance(P, np.ndarray) else P.toarray()
            # The upper triangle of a C-ordered array is the lower triangle of its transpose, which is
            # Fortran-ordered. That lower triangle keeps P; double-precision factorisations work in
            # place on the upper triangle (refilled from the lower one each time, so no second
            # n x n buffer is needed: fresh large allocations are slow where pages fault lazily).
            # P is taken over: pass a copy to keep yours.
            self.P = pd.T if pd.flags.c_contiguous else np.asfortranarray(pd.T)
            self._diag = np.diag(self.P).copy()
            lower = sp.tril(self.Q).tocoo()
            upper = sp.triu(self.Q).tocoo()
            self._q_lower = (lower.row, lower.col, lower.data)
            self._q_upper = (upper.row, upper.col, upper.data)
            self._q_diag = self.Q.diagonal()
            self._single = None  # (float32 buffer, scale) on first single-precision use
            self._upper_is_p = False  # whether the upper triangle holds a copy of P (restored, unused since)
        else:
            self.P = (sp.csc_matrix(P) if isinstance(P, np.ndarray) else P).tocsc()
            if backend == "cholmod":
                self._symbolic = _cholmod.analyze((abs(self.P) + abs(self.Q)).tocsc(), mode="supernodal")
        self.lam: Optional[float] = None
        self.single = False
        self._f = None

    # -- dense helpers -------------------------------------------------------------------
    def _single_setup(self):
        if self._single is None:
            if not np.all(self._diag > 0):
                return None
            self._single = (np.empty(self.P.shape, dtype=np.float32, order="F"), None)
        return self._single

    def _dense_factor(self, lam: float, single: bool):
        if single:
            # scaled to a diagonal of 2^100 (so every entry is at most that): far from float32's
            # overflow (3.4e38) and from its subnormals
            buf = self._single[0]
            scale = np.ldexp(1.0 / np.sqrt(self._diag + lam * self._q_diag), _SINGLE_EXPONENT // 2)
            self._single = (buf, scale)
            scale_lower_f32(self.P, self._diag, scale, buf, math.ldexp(1e-8, _SINGLE_EXPONENT))
            rows, cols, vals = self._q_lower
            buf[rows, cols] += (lam * vals * scale[rows] * scale[cols]).astype(np.float32)
            if not self._upper_is_p:
                # refill the double-precision triangle now, after a Numba kernel rather than after
                # BLAS calls: OpenBLAS's idle threads spin for ~0.1 s and slow a Numba kernel then
                restore_upper(self.P, self._diag)
                self._upper_is_p = True
            c, info = scipy.linalg.lapack.spotrf(buf, lower=1, overwrite_a=1, clean=0)
        else:
            if not self._upper_is_p:
                restore_upper(self.P, self._diag)
            self._upper_is_p = False
            rows, cols, vals = self._q_upper
            self.P[rows, cols] += lam * vals
            c, info = scipy.linalg.lapack.dpotrf(self.P, lower=0, overwrite_a=1, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"leading minor of order {info} is not positive definite" if info > 0
                                        else f"LAPACK potrf argument {-info} invalid")
        return c

    def full_matrix(self) -> np.ndarray:
        """``P + lam Q`` at the last ``lam`` as a dense symmetric array (dense backend)."""
        a = np.tril(self.P, -1)
        a += a.T
        a[np.diag_indices(self.n)] = self._diag
        return a + self.lam * self.Q.toarray()

    def _sym_apply(self, x: np.ndarray) -> np.ndarray:
        """``(P + lam Q) x`` in double precision for a vector or columns, from the lower triangle of
        P (its diagonal may hold a factor's: it is corrected from the kept copy)."""
        fix = self._diag - np.diag(self.P)
        if x.ndim == 1:
            y = scipy.linalg.blas.dsymv(1.0, self.P, x, lower=1) + fix * x
        else:
            y = scipy.linalg.blas.dsymm(1.0, self.P, np.asfortranarray(x), side=0, lower=1) + fix[:, None] * x
        return y + self.lam * (self.Q @ x)

    def _half_solve(self, B: np.ndarray, trans: bool) -> np.ndarray:
        """``G^-1 B`` (or ``G^-T B``) for the factor ``A = G G^T`` of the (scaled) matrix: ``G`` is the
        lower factor after a single-precision factorisation, ``U^T`` (upper ``U``) after a double one."""
        c = self._f
        if self.single:
            return scipy.linalg.blas.strsm(1.0, c, np.asarray(B, dtype=np.float32, order="F"), side=0, lower=1,
                                           trans_a=int(trans))
        return scipy.linalg.blas.dtrsm(1.0, c, np.asarray(B, dtype=np.float64, order="F"), side=0, lower=0,
                                       trans_a=int(not trans))

    # -- public --------------------------------------------------------------------------
    def factor(self, lam: float, single: bool = False) -> "Factorization":
        """Factorise ``P + lam Q``; raises :class:`NotPositiveDefiniteError` if that fails.

        ``single`` (dense backend only; ignored otherwise) factorises in single precision,
        falling back to double where the scaled single-precision matrix is not positive definite.
        """
        self.lam = lam
        single = bool(single) and self.backend == "dense" and self._single_setup() is not None
        try:
            if self.backend == "cholmod":
                self._f = self._symbolic.cholesky(self.P + lam * self.Q)
            elif self.backend == "dense":
                if single:
                    try:
                        self._f = self._dense_factor(lam, True)
                    except np.linalg.LinAlgError:
                        log.debug("single-precision factorisation failed at lam = %.4g; using double", lam)
                        single = False
                if not single:
                    self._f = self._dense_factor(lam, False)
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
        self.single = single
        return self

    def logdet(self) -> float:
        if self.backend == "cholmod":
            return float(self._f.logdet())
        if self.backend == "dense":
            ld = 2.0 * float(np.sum(np.log(np.diag(self._f).astype(np.float64))))
            if self.single:  # the factor is of diag(scale) A diag(scale)
                ld -= 2.0 * float(np.sum(np.log(self._single[1])))
            return ld
        return float(np.sum(np.log(self._f.U.diagonal())))

    def solve(self, b: np.ndarray, refine: bool = True) -> np.ndarray:
        """``A^-1 b`` for a vector or a matrix of columns.

        After a single-precision factorisation the solution is refined against the
        double-precision matrix to double precision, unless ``refine`` is False (then it
        is good to single precision, enough where only the evidence's value is needed:
        that is stationary in ``s``).
        """
        if self.backend == "cholmod":
            return self._f(b)
        if self.backend == "dense":
            if not self.single:
                return scipy.linalg.lapack.dpotrs(self._f, b, lower=0)[0]
            scale = self._single[1]
            sc = scale if b.ndim == 1 else scale[:, None]

            def approx(r):
                return sc * scipy.linalg.lapack.spotrs(self._f, (sc * r).astype(np.float32), lower=1)[0]

            x = approx(b).astype(np.float64)
            if not refine:
                return x
            norm_b = np.linalg.norm(b)
            for _ in range(_REFINE_STEPS):  # iterative refinement against the double-precision matrix
                r = b - self._sym_apply(x)
                if np.linalg.norm(r) <= 1e-15 * norm_b:
                    break
                x += approx(r)
            return x
        return self._f.solve(b)

    def inverse_quadratic(self, v: np.ndarray) -> float:
        """``v^T A^-1 v`` (one triangular solve with a dense factor)."""
        if self.backend == "dense":
            y = self._half_solve((v * self._single[1] if self.single else v)[:, None], trans=False)
            return float(np.sum(y.astype(np.float64) ** 2))
        return float(v @ self.solve(v))

    def trace_terms(self, probes: Optional[np.ndarray]) -> tuple[float, float]:
        """``tr(A^-1 Q)`` and ``tr((A^-1 Q)^2)``: exactly when ``probes`` is None (forms ``A^-1``),
        else Hutchinson estimates from the ``(n, k)`` Rademacher ``probes``.

        With a dense factor ``G`` the estimates use ``X = G^-1 Q G^-T`` (``tr X`` and
        ``tr X^2 = E |X z|^2``, from :meth:`newton_terms`); otherwise ``A^-1 Q z`` and
        ``A^-1 z`` from solves.
        """
        Q = self.Q
        if probes is None:
            aq = np.asarray(self.solve(np.eye(self.n)) @ Q)  # A^-1 Q
            return float(np.trace(aq)), float(np.sum(aq * aq.T))
        if self.backend == "dense":
            return self.newton_terms(np.zeros(self.n), probes)[1:3]
        k = probes.shape[1]
        u = self.solve(np.asarray(Q @ probes))
        v = self.solve(probes)
        return float(np.sum(probes * u)) / k, float(np.sum(v * (Q @ u))) / k

    def newton_terms(self, b: np.ndarray, probes: Optional[np.ndarray]) -> tuple[np.ndarray, float, float, float]:
        """``s = A^-1 b`` with the terms of the evidence's derivatives in ``lam``: ``tr(A^-1 Q)``,
        ``tr((A^-1 Q)^2)`` (as :meth:`trace_terms`) and ``(Q s)^T A^-1 (Q s)``.

        With a dense factor and probes this takes three triangular solves in all (``G^-1 b``;
        ``G^-T`` of that and of the probes together; ``G^-1`` of ``Q s`` and of the scaled ``Q G^-T
        z`` together) instead of five. After a single-precision factorisation ``s`` is good to
        single precision (not refined): the evidence is stationary in ``s``.
        """
        if self.backend != "dense" or probes is None:
            s = self.solve(b, refine=not self.single)
            t1, t2 = self.trace_terms(probes)
            return s, t1, t2, self.inverse_quadratic(self.Q @ s)
        n, k = probes.shape
        scale = self._single[1] if self.single else np.ones(n)
        dtype = np.float32 if self.single else np.float64
        c = self._half_solve((scale * b)[:, None], trans=False)
        rhs = np.empty((n, k + 1), dtype=dtype, order="F")
        rhs[:, 0] = c[:, 0]
        rhs[:, 1:] = probes
        y = self._half_solve(rhs, trans=True).astype(np.float64)
        s = scale * y[:, 0]
        hs = self.Q @ s
        rhs[:, 0] = scale * hs
        rhs[:, 1:] = scale[:, None] * (self.Q @ (scale[:, None] * y[:, 1:]))
        u = self._half_solve(rhs, trans=False).astype(np.float64)
        return (s, float(np.sum(probes * u[:, 1:])) / k, float(np.sum(u[:, 1:] ** 2)) / k,
                float(np.sum(u[:, 0] ** 2)))

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


_REFINE_STEPS = 4
_SINGLE_EXPONENT = 100  # single-precision factorisations are of the matrix scaled to a diagonal of 2^this


def logdet_spd(H: sp.spmatrix) -> float:
    """``log det`` of a sparse symmetric positive definite matrix (CHOLMOD, else SuperLU)."""
    f = Factorization(H, sp.csc_matrix(H.shape), backend="cholmod" if _cholmod is not None else "splu")
    return f.factor(0.0).logdet()
