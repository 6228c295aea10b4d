"""Regularized semilinear inversion (Warren & Dye 2003) with the regularization strength set by
the Bayesian evidence (Suyu et al. 2006).

For data ``d`` (the used image pixels), operator ``M = F L`` (their rows),
noise covariance ``C = diag(sigma^2)`` and regularization matrix ``H``, the
most probable source at strength ``lam`` solves

    A s = M^T C^-1 d,        A = M^T C^-1 M + lam H,

and the log evidence of ``lam`` (Suyu et al. 2006, eq. 19, with ``N_s``
unknowns and ``N_d`` data) is

    log P(d | lam) = -chi^2 / 2 - lam s^T H s / 2 - log det A / 2 + N_s log(lam) / 2
                     + log det H / 2 - N_d log(2 pi) / 2 - sum log sigma,

which equals the Gaussian marginal likelihood ``log N(d; 0, C + M (lam H)^-1 M^T)``.

The unknowns are the source pixels that some ray from a used image pixel
reaches (non-zero columns of M); the others are fixed to zero, and ``H`` is
restricted to the unknowns accordingly. ``lam = None`` maximises the log
evidence over ``ln lam`` by Newton's method on its derivative (Suyu et al.
2006, eq. 20 differentiated once more):

    d logP / d ln lam = N_s / 2 - lam E_S - lam tr(A^-1 H) / 2,
    d^2 logP / d (ln lam)^2 = -lam E_S + lam^2 (Hs)^T A^-1 (Hs) - lam tr(A^-1 H) / 2
                              + lam^2 tr(A^-1 H A^-1 H) / 2,

with ``E_S = s^T H s / 2``. The traces are exact for small problems and
Hutchinson estimates (32 Rademacher probes, a fixed seed) otherwise; far from
the maximum MacKay's fixed-point step ``lam -> gamma / (2 E_S)``, ``gamma =
N_s - lam tr(A^-1 H)``, is taken where it goes further, and once the maximum is
bracketed steps stay inside the bracket. With the dense backend the search
factorises in single precision until the predicted step is below 0.25 dex, then
evaluates the predicted maximum in double precision and accepts it when the
parabola through that value and the last point's value and slope peaks within
``lam_tol`` of it (else it goes on in double precision). The result (source,
evidence, chi^2) is always that of a double-precision evaluation. Typically two
or three factorisations are needed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from lensinv import LensOperator

from ._kernels import normal_matrix_csr, normal_matrix_dense, psf_normal_matrix
from .regularization import FORMS, regularization_matrix
from .solvers import Factorization, NotPositiveDefiniteError, choose_backend, logdet_spd

log = logging.getLogger(__name__)

__all__ = ["InversionResult", "NotPositiveDefiniteError", "invert"]


@dataclass(frozen=True, eq=False)
class InversionResult:
    """The outcome of :func:`invert`.

    Attributes
    ----------
    source : ndarray
        ``(n_src, n_src)`` most probable source (zero where no ray reaches).
    lam : float
        Regularization strength used.
    log_evidence : float
        ``log P(d | lam)`` (natural log) of the unconstrained model at ``lam``.
    chi2 : float
        ``sum(((M s - d) / sigma)^2)`` over the used pixels.
    n_data : int
        Used image pixels.
    n_unknowns : int
        Source pixels solved for.
    regularization : str
    reached : ndarray
        ``(n_src, n_src)`` bool: the pixels solved for.
    source_std : ndarray or None
        Posterior standard deviation per pixel (``sqrt(diag(A^-1))``), NaN where
        not solved for; only when asked for.
    backend : str
        Factorisation used: ``"cholmod"``, ``"dense"`` or ``"splu"``.
    evaluations : int
        Factorisations made.
    evidence_curve : tuple of (lam, log_evidence) pairs
        Every ``lam`` tried, sorted (single-precision evaluations good to about 1e-4).
    single_precision_evaluations : int
        How many of the factorisations were in single precision (the search's first steps).
    timings : dict
        Seconds spent per stage (``normal_matrix``, ``factorisations``, ...).
    """

    source: np.ndarray
    lam: float
    log_evidence: float
    chi2: float
    n_data: int
    n_unknowns: int
    regularization: str
    reached: np.ndarray
    source_std: Optional[np.ndarray]
    backend: str
    evaluations: int
    evidence_curve: tuple
    single_precision_evaluations: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def reduced_chi2(self) -> float:
        """``chi2 / n_data``."""
        return self.chi2 / self.n_data


def _check_inputs(op: LensOperator, image, sigma, mask):
    n_img = op.image_grid.n
    img = np.asarray(image, dtype=np.float64)
    if img.shape not in ((n_img, n_img), (n_img * n_img,)):
        raise ValueError(f"image must have shape ({n_img}, {n_img}) to match the operator, got {img.shape}")
    img = img.reshape(-1)
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf values")
    sig = np.asarray(sigma, dtype=np.float64)
    if sig.ndim == 0:
        if not math.isfinite(float(sig)) or sig <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {float(sig)!r}")
        sig = np.full(img.size, float(sig))
    else:
        if sig.shape not in ((n_img, n_img), (n_img * n_img,)):
            raise ValueError(f"sigma map must have shape ({n_img}, {n_img}), got {sig.shape}")
        sig = sig.reshape(-1)
    if mask is None:
        use = np.ones(img.size, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
        if m.shape not in ((n_img, n_img), (n_img * n_img,)):
            raise ValueError(f"mask must have shape ({n_img}, {n_img}), got {m.shape}")
        use = m.reshape(-1)
    if not use.any():
        raise ValueError("mask leaves no image pixels to fit")
    s_used = sig[use]
    if not np.all(np.isfinite(s_used)) or np.any(s_used <= 0):
        raise ValueError("sigma must be finite and > 0 on every used pixel")
    return img, sig, use


def invert(op: LensOperator, image: np.ndarray, sigma: Union[float, np.ndarray], regularization: str = "gradient",
           lam: Optional[float] = None, mask: Optional[np.ndarray] = None, *, return_std: bool = False,
           nonnegative: bool = False, backend: str = "auto", lam_tol: float = 0.04) -> InversionResult:
    """Reconstruct a source by regularized least squares with the Bayesian evidence.

    Parameters
    ----------
    op : LensOperator
        The forward model ``F L`` of the lens (``lensinv.operator``).
    image : ndarray
        Observed image, ``(n_img, n_img)`` or flat, in the source's brightness units.
    sigma : float or ndarray
        Noise standard deviation: a scalar, or a per-pixel map of the image's shape.
    regularization : {"zeroth", "gradient", "curvature"}
        The form of H (see :mod:`baselines.regularization`).
    lam : float, optional
        Regularization strength (> 0). None chooses it by maximising the evidence.
    mask : ndarray of bool, optional
        Image pixels to use (True = use). Default: all.
    return_std : bool
        Also compute the per-pixel posterior standard deviation.
    nonnegative : bool
        Return the most probable source under a non-negativity constraint at
        the chosen ``lam`` (the evidence is that of the unconstrained model).
    backend : {"auto", "cholmod", "dense", "splu"}
        Factorisation (see :mod:`baselines.solvers`).
    lam_tol : float
        Tolerance on ``log10(lam)`` when maximising the evidence.

    Returns
    -------
    InversionResult

    Raises
    ------
    ValueError
        Invalid input: non-finite image or sigma, sigma <= 0, shapes that do not
        match the operator, a mask that leaves no pixels, unknown options.
    NotPositiveDefiniteError
        A factorisation failed.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not isinstance(op, LensOperator):
        raise ValueError(f"op must be a lensinv.LensOperator, got {type(op).__name__}")
    if regularization not in FORMS:
        raise ValueError(f"regularization must be one of {', '.join(FORMS)}, got {regularization!r}")
    if lam is not None and (not math.isfinite(float(lam)) or float(lam) <= 0):
        raise ValueError(f"lam must be a finite number > 0 or None, got {lam!r}")
    if not math.isfinite(float(lam_tol)) or float(lam_tol) <= 0:
        raise ValueError(f"lam_tol must be a finite number > 0 (dex), got {lam_tol!r}")
    d, sig, use = _check_inputs(op, image, sigma, mask)
    M = op.matrix
    timings["operator"] = time.perf_counter() - t0

    t = time.perf_counter()
    Mu = M[use] if not use.all() else M
    Mc = Mu.tocsc()
    reached = np.diff(Mc.indptr) > 0
    if not reached.any():
        raise ValueError("no source pixel is reached by a ray from the used image pixels")
    idx = np.flatnonzero(reached)
    if idx.size < M.shape[1]:
        Mc = Mc[:, idx]
        Mr = Mc.tocsr()
    else:
        Mr = Mu.tocsr()
    Mc.sort_indices()
    w = 1.0 / sig[use] ** 2
    du = d[use]
    n_s, n_d = idx.size, int(use.sum())
    nnz_bound = int(np.sum(np.diff(Mr.indptr).astype(np.int64) ** 2))
    chosen = choose_backend(backend, n_s, nnz_bound)
    args = (Mr.indptr, Mr.indices, Mr.data, Mc.indptr, Mc.indices, Mc.data, w, n_s)
    if chosen == "dense" and op.psf is not None:
        # M^T W M = L^T (F^T W F) L: far fewer products than over the PSF-wide rows of M
        w_img = np.zeros(d.size)
        w_img[use] = w
        unknown = np.full(op.source_grid.size, -1, dtype=np.int64)
        unknown[idx] = np.arange(n_s)
        L, Lc = op.L, op.L.tocsc()
        P = psf_normal_matrix(op.image_grid.n, op.psf, w_img, L.indptr, L.indices, L.data, Lc.indptr, Lc.indices,
                              Lc.data, op.source_grid.n, unknown, n_s)
    elif chosen == "dense":
        P = normal_matrix_dense(*args)  # upper triangle
    else:
        ptr, ind, val = normal_matrix_csr(*args)
        P = sp.csr_matrix((val, ind, ptr), shape=(n_s, n_s))
    b = Mr.T @ (w * du)
    H = regularization_matrix(regularization, op.source_grid.n)
    if n_s < H.shape[0]:
        H = H[idx][:, idx].tocsr()
    timings["normal_matrix"] = time.perf_counter() - t

    t = time.perf_counter()
    fact = Factorization(P, H, backend=chosen)
    logdet_h = logdet_spd(H)
    const = 0.5 * logdet_h - 0.5 * n_d * math.log(2.0 * math.pi) - float(np.sum(np.log(sig[use])))
    probes = None
    if n_s > _EXACT_TRACE_MAX:
        probes = np.random.default_rng(_PROBE_SEED).choice(np.array([-1.0, 1.0]), size=(n_s, _PROBES))
    timings["analysis"] = time.perf_counter() - t

    curve: list[_Evaluation] = []  # every factorisation, in order; the last one is reported
    t_fact = [0.0]

    def evaluate(x: float, single: bool, derivatives: bool = True) -> _Point:
        ts = time.perf_counter()
        lam_ = math.exp(x)
        fact.factor(lam_, single=single)
        # a single-precision solution suffices for a search step: the evidence is stationary in s
        s = fact.solve(b, refine=not fact.single)
        r = (Mr @ s - du) * np.sqrt(w)
        chi2 = float(r @ r)
        hs = H @ s
        es = 0.5 * float(s @ hs)
        logev = -0.5 * chi2 - lam_ * es - 0.5 * fact.logdet() + 0.5 * n_s * x + const
        point = _Point(x=x, log_evidence=logev)
        if derivatives:
            t1, t2 = fact.trace_terms(probes)
            u2 = fact.inverse_quadratic(hs)
            gamma = n_s - lam_ * t1
            point = _Point(x=x, log_evidence=logev, g=0.5 * gamma - lam_ * es,
                           dg=-lam_ * es + lam_**2 * u2 - 0.5 * lam_ * t1 + 0.5 * lam_**2 * t2,
                           mackay=math.log(gamma / (2.0 * es)) - x if gamma > 0 and es > 0 else math.nan)
        curve.append(_Evaluation(lam=lam_, log_evidence=logev, single=fact.single, source=s, chi2=chi2))
        t_fact[0] += time.perf_counter() - ts
        return point

    if lam is None:
        _maximise_evidence(evaluate, math.log(_initial_lam(P, H, regularization)), lam_tol * _LN10,
                           single=chosen == "dense")
    else:
        evaluate(math.log(float(lam)), single=False, derivatives=False)
    last = curve[-1]
    assert not last.single  # the search always ends on a double-precision evaluation
    lam, logev, s, chi2 = last.lam, last.log_evidence, last.source, last.chi2
    timings["factorisations"] = t_fact[0]

    t = time.perf_counter()
    std = None
    if return_std:
        std = np.full(op.source_grid.size, np.nan)
        std[idx] = np.sqrt(fact.inverse_diagonal())
        std = std.reshape(op.source_grid.shape)
    if nonnegative:
        if fact.backend == "dense":
            A = fact.full_matrix()
        else:
            A = (P + lam * H).tocsr()
        s = _nonnegative(A, b, s)
        r = (Mr @ s - du) * np.sqrt(w)
        chi2 = float(r @ r)
    timings["extras"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    full = np.zeros(op.source_grid.size)
    full[idx] = s
    return InversionResult(source=full.reshape(op.source_grid.shape), lam=lam, log_evidence=logev, chi2=chi2,
                           n_data=n_d, n_unknowns=n_s, regularization=regularization,
                           reached=reached.reshape(op.source_grid.shape), source_std=std, backend=fact.backend,
                           evaluations=len(curve), evidence_curve=tuple(sorted((e.lam, e.log_evidence) for e in curve)),
                           single_precision_evaluations=sum(e.single for e in curve), timings=timings)


_LN10 = math.log(10.0)
_PROBES = 32
_PROBE_SEED = 20061231
_EXACT_TRACE_MAX = 1500  # unknowns up to which the traces in the derivatives are computed exactly
_SINGLE_UNTIL = 0.25 * _LN10  # single-precision search steps until the predicted step is this small (ln lam)
_MAX_STEP = 2.0 * _LN10
_SPAN = 12.0 * _LN10
# the evidence optimum relative to the balance tr(M^T C^-1 M) = lam tr(H), median over simulated lenses
_BALANCE_OFFSET = {"zeroth": 0.4, "gradient": 3.0, "curvature": 20.0}


@dataclass(frozen=True, eq=False)
class _Evaluation:
    """What one factorisation gave: the most probable source and its evidence at ``lam``."""

    lam: float
    log_evidence: float
    single: bool
    source: np.ndarray
    chi2: float


@dataclass(frozen=True)
class _Point:
    """One evaluation of the evidence at ``x = ln lam``, with its derivatives in ``x``."""

    x: float
    log_evidence: float
    g: float = math.nan
    dg: float = math.nan
    mackay: float = math.nan


def _initial_lam(P, H: sp.spmatrix, form: str) -> float:
    """A scale-aware first guess: the strength at which the prior's trace equals the data's, times
    the median ratio of the evidence optimum to it on simulated lenses (per regularization form;
    the spread is about one decade either way)."""
    trace_p = float(np.trace(P)) if isinstance(P, np.ndarray) else float(P.diagonal().sum())
    return _BALANCE_OFFSET[form] * trace_p / float(H.diagonal().sum())


def _maximise_evidence(evaluate, x0: float, tol: float, single: bool) -> None:
    """Maximise the log evidence over ``x = ln lam`` from ``x0``. The last evaluation is the result:
    it is in double precision and within ``tol`` of the predicted maximum.

    ``evaluate(x, single, derivatives=True)`` returns a :class:`_Point`. With ``single`` the
    search starts in single precision; once a step below 0.25 dex is predicted, the value at the
    predicted maximum is evaluated in double precision, and accepted when the parabola through it
    and the last point's value and slope peaks within ``tol`` of it; otherwise the search goes on
    in double precision until a predicted step is below ``tol``. Steps: Newton's on the derivative ``g``
    where the curvature is negative (else a maximal step uphill); MacKay's fixed-point step where
    it goes further in the same direction (far from the maximum ``g`` flattens and Newton's steps
    shrink); at most 2 decades; and, once points on both sides of the maximum are known
    (``g > 0`` and ``g < 0``), the secant of ``g`` between the nearest two when the step would
    leave that bracket.
    """
    pts: list[_Point] = []
    x = x0
    for _ in range(60):
        p = evaluate(x, single)
        pts.append(p)
        step = _next_step(p, pts)
        if not single and abs(step) < tol:
            return
        if not x0 - _SPAN <= x + step <= x0 + _SPAN:
            log.warning("the evidence keeps rising towards lam = %.3g; stopping at the search bound", math.exp(x))
            if single:
                evaluate(x, False, derivatives=False)
            return
        if single and abs(step) < _SINGLE_UNTIL:
            # close: one double-precision evaluation of the value at the predicted maximum; the
            # parabola through it and this point's value and slope confirms it (or moves on)
            xd = x + step
            pd = evaluate(xd, False, derivatives=False)
            curv = (pd.log_evidence - p.log_evidence - p.g * step) / step**2 if step != 0 else -math.inf
            if curv < 0 and abs(p.x - p.g / (2.0 * curv) - xd) < tol:
                return
            single = False
            x = p.x - p.g / (2.0 * curv) if curv < 0 else xd
            continue
        x += step
    log.warning("the evidence search did not converge in 60 steps; using lam = %.4g", math.exp(x))
    evaluate(x, False, derivatives=False)


def _next_step(p: _Point, pts: list) -> float:
    """The search step from ``p`` (see :func:`_maximise_evidence`)."""
    step = -p.g / p.dg if p.dg < 0 else math.copysign(_MAX_STEP, p.g)
    if p.mackay * p.g > 0 and abs(p.mackay) > abs(step):  # False for NaN
        step = p.mackay
    step = max(-_MAX_STEP, min(_MAX_STEP, step))
    below = [q for q in pts if q.g > 0]
    above = [q for q in pts if q.g < 0]
    if below and above:
        a = max(below, key=lambda q: q.x)
        c = min(above, key=lambda q: q.x)
        if a.x < c.x and not a.x < p.x + step < c.x:
            step = a.x - a.g * (c.x - a.x) / (c.g - a.g) - p.x
    return step


def _nonnegative(A, b: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """argmin 1/2 s^T A s - b^T s subject to s >= 0 (L-BFGS-B from the clipped unconstrained solution)."""
    scale = max(float(np.abs(b).max()), 1e-300)

    def fun(s):
        g = A @ s
        return (0.5 * s @ g - b @ s) / scale, (g - b) / scale

    res = scipy.optimize.minimize(fun, np.clip(s0, 0, None), jac=True, method="L-BFGS-B",
                                  bounds=[(0.0, None)] * s0.size, options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-10})
    return np.clip(res.x, 0.0, None)
