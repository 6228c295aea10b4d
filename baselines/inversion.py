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
bracketed steps stay inside the bracket.

For large problems (over 1,500 unknowns) the search starts from the maximum of
the same data's evidence with the source binned 2x2 (a quarter of the unknowns,
about 1/64 of the work per factorisation), scaled by the median ratio of the
two optima measured on simulated lenses: within about 0.1 dex. On the dense
backend, points far from the maximum (a predicted step of 0.25 dex or more, and
the first one) are factorised in single precision. Close to it, the value at
the predicted maximum is evaluated in double precision and accepted when the
parabola through it and the last point's value and slope peaks within
``lam_tol`` of it with a predicted gain in log evidence below 0.1 nats; a
double-precision point with derivatives is accepted on the same terms. So one
single-precision and one double-precision factorisation usually suffice. The
result (source, evidence, chi^2) is always that of a double-precision
evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from lensinv import LensOperator

from ._kernels import coarsen_upper, normal_matrix_csr, normal_matrix_dense, psf_normal_matrix
from .regularization import FORMS, log_det_exact, regularization_matrix
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
        Tolerance on ``log10(lam)`` when maximising the evidence. The search also goes on
        until the predicted gain in log evidence from a further step is below 0.1 nats.

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
    Mu = M[use] if not use.all() else M  # CSR: the used rows
    reached = np.zeros(M.shape[1], dtype=bool)
    reached[Mu.indices] = True  # source pixels some used row touches
    if not reached.any():
        raise ValueError("no source pixel is reached by a ray from the used image pixels")
    idx = np.flatnonzero(reached)
    w = 1.0 / sig[use] ** 2
    du = d[use]
    n_s, n_d = idx.size, int(use.sum())
    nnz_bound = int(np.sum(np.diff(Mu.indptr).astype(np.int64) ** 2))
    chosen = choose_backend(backend, n_s, nnz_bound)
    if chosen == "dense" and op.psf is not None:
        # M^T W M = L^T (F^T W F) L: far fewer products than over the PSF-wide rows of M
        w_img = np.zeros(d.size)
        w_img[use] = w
        unknown = np.full(op.source_grid.size, -1, dtype=np.int64)
        unknown[idx] = np.arange(n_s)
        L, Lc = op.L, op.L.tocsc()
        P = psf_normal_matrix(op.image_grid.n, op.psf, w_img, L.indptr, L.indices, L.data, Lc.indptr, Lc.indices,
                              Lc.data, op.source_grid.n, unknown, n_s)
    else:
        Mc = Mu.tocsc()
        if n_s < M.shape[1]:
            Mc = Mc[:, idx]
            Mr = Mc.tocsr()
        else:
            Mr = Mu
        Mc.sort_indices()
        args = (Mr.indptr, Mr.indices, Mr.data, Mc.indptr, Mc.indices, Mc.data, w, n_s)
        if chosen == "dense":
            P = normal_matrix_dense(*args)  # upper triangle
        else:
            ptr, ind, val = normal_matrix_csr(*args)
            P = sp.csr_matrix((val, ind, ptr), shape=(n_s, n_s))
    b = (Mu.T @ (w * du))[idx]
    H = regularization_matrix(regularization, op.source_grid.n)
    logdet_h = None
    if n_s < H.shape[0]:
        H = H[idx][:, idx].tocsr()
    else:
        logdet_h = log_det_exact(regularization, op.source_grid.n)  # analytic for the whole grid
    timings["normal_matrix"] = time.perf_counter() - t

    t = time.perf_counter()
    x0 = None
    if lam is None and n_s > _COARSE_FROM:
        # the maximum of a 2x2-binned source's evidence (cheap: a quarter of the unknowns) predicts
        # this one's to about 0.1 dex, so the search starts close and usually needs one or two steps
        try:
            x0 = math.log(_coarse_guess(P, b, regularization, idx, op.source_grid.n))
        except NotPositiveDefiniteError as exc:  # numerically, at some tiny lam: start from the balance
            log.debug("no start from the binned source (%s)", exc)
    timings["coarse_search"] = time.perf_counter() - t

    t = time.perf_counter()
    fact = Factorization(P, H, backend=chosen)
    if logdet_h is None:
        logdet_h = logdet_spd(H)
    const = 0.5 * logdet_h - 0.5 * n_d * math.log(2.0 * math.pi) - float(np.sum(np.log(sig[use])))
    probes = _probes(n_s) if n_s > _EXACT_TRACE_MAX else None
    timings["analysis"] = time.perf_counter() - t

    full = np.zeros(M.shape[1])

    def chi2_of(s: np.ndarray) -> float:
        full[idx] = s
        r = (Mu @ full - du) * np.sqrt(w)
        return float(r @ r)

    evidence = _Evidence(fact, H, b, chi2_of, const, probes)
    if lam is None:
        if x0 is None:
            x0 = math.log(_initial_lam(P, H, regularization))
        _maximise_evidence(evidence, x0, lam_tol * _LN10, start_single=chosen == "dense",
                           allow_single=chosen == "dense")
    else:
        evidence(math.log(float(lam)), single=False, derivatives=False)
    curve = evidence.curve
    last = curve[-1]
    assert not last.single  # the search always ends on a double-precision evaluation
    lam, logev, s, chi2 = last.lam, last.log_evidence, last.source, last.chi2
    timings["factorisations"] = evidence.seconds

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
        chi2 = chi2_of(s)
    timings["extras"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    source = np.zeros(op.source_grid.size)
    source[idx] = s
    return InversionResult(source=source.reshape(op.source_grid.shape), lam=lam, log_evidence=logev, chi2=chi2,
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
# the search stops where the predicted gain in log evidence from moving to the predicted maximum is
# below this (nats) as well as the step below lam_tol: sharply peaked evidence (many unknowns, high
# S/N) has |d^2 log P / d (ln lam)^2| of several hundred, where 0.04 dex would cost ~2 nats
_GAIN_TOL = 0.1
# the evidence optimum relative to the balance tr(M^T C^-1 M) = lam tr(H), median over simulated lenses
_BALANCE_OFFSET = {"zeroth": 0.4, "gradient": 3.0, "curvature": 20.0}
_COARSE_FROM = 1500  # unknowns above which the search starts from the 2x2-binned source's optimum
# log10 of the full-resolution optimum over the binned one: medians over simulated lenses
# (realistic preset, 192^2 images, 48-80 pixel sources; scatter 0.05-0.1 dex)
_COARSE_OFFSET = {"zeroth": -0.38, "gradient": 0.04, "curvature": 0.53}


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


class _Evidence:
    """``log P(d | lam)`` and its derivatives in ``x = ln lam`` for one set of normal equations
    ``(P + lam H) s = b``; every evaluation is kept in ``curve`` (in order) and timed.

    ``chi2(s)`` gives the misfit of a source; None takes it from the normal equations,
    ``chi2 = d^T C^-1 d - b^T s - lam s^T H s`` up to the constant ``d^T C^-1 d`` (enough where
    only the location of the maximum matters).
    """

    def __init__(self, fact: Factorization, H: sp.spmatrix, b: np.ndarray,
                 chi2: Optional[Callable[[np.ndarray], float]], const: float, probes: Optional[np.ndarray]) -> None:
        self.fact, self.H, self.b, self.chi2, self.const, self.probes = fact, H, b, chi2, const, probes
        self.n = b.size
        self.curve: list[_Evaluation] = []
        self.seconds = 0.0

    def __call__(self, x: float, single: bool, derivatives: bool = True) -> _Point:
        ts = time.perf_counter()
        lam = math.exp(x)
        fact = self.fact.factor(lam, single=single)
        # a single-precision solution suffices for a search step: the evidence is stationary in s
        if derivatives:
            s, t1, t2, u2 = fact.newton_terms(self.b, self.probes)
        else:
            s = fact.solve(self.b, refine=not fact.single)
        hs = self.H @ s
        es = 0.5 * float(s @ hs)
        chi2 = self.chi2(s) if self.chi2 is not None else -float(self.b @ s) - 2.0 * lam * es
        logev = -0.5 * chi2 - lam * es - 0.5 * fact.logdet() + 0.5 * self.n * x + self.const
        point = _Point(x=x, log_evidence=logev)
        if derivatives:
            gamma = self.n - lam * t1
            point = _Point(x=x, log_evidence=logev, g=0.5 * gamma - lam * es,
                           dg=-lam * es + lam**2 * u2 - 0.5 * lam * t1 + 0.5 * lam**2 * t2,
                           mackay=math.log(gamma / (2.0 * es)) - x if gamma > 0 and es > 0 else math.nan)
        self.curve.append(_Evaluation(lam=lam, log_evidence=logev, single=fact.single, source=s, chi2=chi2))
        self.seconds += time.perf_counter() - ts
        return point


def _probes(n: int) -> np.ndarray:
    """``(n, _PROBES)`` Rademacher vectors for the Hutchinson trace estimates (fixed seed)."""
    return np.random.default_rng(_PROBE_SEED).choice(np.array([-1.0, 1.0]), size=(n, _PROBES))


def _initial_lam(P, H: sp.spmatrix, form: str) -> float:
    """A scale-aware first guess: the strength at which the prior's trace equals the data's, times
    the median ratio of the evidence optimum to it on simulated lenses (per regularization form;
    the spread is about one decade either way)."""
    trace_p = float(np.trace(P)) if isinstance(P, np.ndarray) else float(P.diagonal().sum())
    return _BALANCE_OFFSET[form] * trace_p / float(H.diagonal().sum())


def _coarse_guess(P, b: np.ndarray, form: str, idx: np.ndarray, n_src: int) -> float:
    """The evidence-optimal ``lam`` of the same data with the source binned 2x2, times the median
    ratio of the full-resolution optimum to it on simulated lenses (per form).

    ``P`` (dense upper triangle or sparse) and ``b`` are the normal equations of the unknowns
    ``idx`` (flat pixels of the ``n_src``-wide source grid). Binning the source by ``U`` (each fine
    unknown in its 2x2 block) gives ``U^T P U`` and ``U^T b``: a quarter of the unknowns, a
    sixty-fourth of the work per factorisation. The binned problem's own regularization matrix is
    ``H`` of the coarse grid, so the optimal strengths differ by about the ratio of the pixel areas
    (a factor 4 down for ``zeroth``, 1 for ``gradient``, 4 up for ``curvature`` in the continuum
    limit); the measured ratios (192^2 images, 48-80 pixel sources) scatter by 0.05-0.1 dex.
    """
    nc = (n_src + 1) // 2
    r, c = np.divmod(idx, n_src)
    blocks, group = np.unique((r // 2) * nc + c // 2, return_inverse=True)
    m = blocks.size
    if isinstance(P, np.ndarray):
        members = np.argsort(group, kind="stable")
        starts = np.concatenate(([0], np.cumsum(np.bincount(group, minlength=m))))
        Pc = coarsen_upper(P, starts, members, group, m)
    else:
        U = sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), group)), shape=(idx.size, m))
        Pc = (U.T @ (P @ U)).toarray()
    bc = np.bincount(group, weights=b, minlength=m)
    Hc = regularization_matrix(form, nc)
    if m < Hc.shape[0]:
        Hc = Hc[blocks][:, blocks].tocsr()
    coarse = _Evidence(Factorization(Pc, Hc, backend="dense"), Hc, bc, None, 0.0, _probes(m))
    return math.exp(_predict_maximum(coarse, math.log(_initial_lam(Pc, Hc, form)))) * 10.0 ** _COARSE_OFFSET[form]


def _predict_maximum(evaluate: _Evidence, x0: float) -> float:
    """Where the evidence peaks in ``x = ln lam``, from single-precision steps of
    :func:`_maximise_evidence`'s kind until one is below 0.1 dex (the point it predicts, good to
    about 0.01 dex, is returned without evaluating it)."""
    pts: list[_Point] = []
    x = x0
    for _ in range(30):
        p = evaluate(x, single=True)
        pts.append(p)
        step = _next_step(p, pts)
        x += step
        if abs(step) < 0.1 * _LN10 or not x0 - _SPAN <= x <= x0 + _SPAN:
            break
    return x


def _maximise_evidence(evaluate: _Evidence, x0: float, tol: float, start_single: bool, allow_single: bool) -> None:
    """Maximise the log evidence over ``x = ln lam`` from ``x0``. The last evaluation is the result:
    it is in double precision and within ``tol`` of the predicted maximum.

    ``evaluate(x, single, derivatives=True)`` returns a :class:`_Point`. Steps: Newton's on the
    derivative ``g`` where the curvature is negative (else a maximal step uphill); MacKay's
    fixed-point step where it goes further in the same direction (far from the maximum ``g``
    flattens and Newton's steps shrink); at most 2 decades; and, once points on both sides of
    the maximum are known (``g > 0`` and ``g < 0``), the secant of ``g`` between the nearest two
    when the step would leave that bracket.

    Stopping and precision: a double-precision point is the result where its predicted step is
    below ``tol`` and the predicted gain in log evidence from taking it (``g^2 / 2|g'|``) is below
    ``_GAIN_TOL`` nats. Far from the maximum (a predicted step of 0.25 dex or more) the next point
    is factorised in single precision where ``allow_single`` (the first one where
    ``start_single``). Close to it (a smaller step), the value at the predicted maximum is
    evaluated in double precision and accepted when the parabola through it and the last point's
    value and slope peaks within ``tol`` of it with a gain below ``_GAIN_TOL``; otherwise the
    search goes on in double precision from that parabola's peak.
    """
    pts: list[_Point] = []
    x = x0
    single = start_single and allow_single
    for _ in range(60):
        p = evaluate(x, single)
        pts.append(p)
        step = _next_step(p, pts)
        # a Newton step's predicted gain is g^2 / (2 |g'|)
        if not single and abs(step) < tol and (p.dg < 0 and 0.5 * p.g**2 / -p.dg < _GAIN_TOL):
            return
        if not x0 - _SPAN <= x + step <= x0 + _SPAN:
            log.warning("the evidence keeps rising towards lam = %.3g; stopping at the search bound", math.exp(x))
            if single:
                evaluate(x, False, derivatives=False)
            return
        if abs(step) < _SINGLE_UNTIL:
            # close: one double-precision evaluation of the value at the predicted maximum; the
            # parabola through it and this point's value and slope confirms it (or moves on)
            xd = x + step
            pd = evaluate(xd, False, derivatives=False)
            curv = (pd.log_evidence - p.log_evidence - p.g * step) / step**2 if step != 0 else -math.inf
            if step == 0:
                return
            if curv < 0:
                peak = p.x - p.g / (2.0 * curv)
                if abs(peak - xd) < tol and -curv * (peak - xd) ** 2 < _GAIN_TOL:
                    return
            single = False
            x = peak if curv < 0 else xd
            continue
        single = allow_single
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
