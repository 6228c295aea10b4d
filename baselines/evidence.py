"""The regularization strength ``lam`` that maximises the Bayesian evidence (Suyu et al. 2006).

For normal equations ``P t = b`` (:mod:`baselines.normal_equations`) and a regularization ``H``
restricted to the unknowns, the most probable correction at ``lam`` solves ``A t = b`` with
``A = P + lam H``, and the log evidence (Suyu et al. 2006, eq. 19, with ``N_s`` unknowns) is

    log P(d | lam) = -chi^2 / 2 - lam t^T H t / 2 - log det A / 2 + N_s log(lam) / 2
                     + log det H / 2 - N_d log(2 pi) / 2 - sum log sigma,

the Gaussian marginal likelihood ``log N(d; M s0, C + M (lam H)^-1 M^T)``. :func:`search_evidence`
maximises it over ``ln lam`` by Newton's method on its derivative (eq. 20 differentiated once
more):

    d logP / d ln lam = N_s / 2 - lam E_S - lam tr(A^-1 H) / 2,
    d^2 logP / d (ln lam)^2 = -lam E_S + lam^2 (Ht)^T A^-1 (Ht) - lam tr(A^-1 H) / 2
                              + lam^2 tr(A^-1 H A^-1 H) / 2,

with ``E_S = t^T H t / 2``. The traces are exact for small problems and Hutchinson estimates (32
Rademacher probes, a fixed seed) otherwise; far from the maximum MacKay's fixed-point step
``lam -> gamma / (2 E_S)``, ``gamma = N_s - lam tr(A^-1 H)``, is taken where it goes further,
and once the maximum is bracketed steps stay inside the bracket.

For large problems (over 1,500 unknowns) the search starts from the maximum of the same data's
evidence with the source binned 2x2 (a quarter of the unknowns, about 1/64 of the work per
factorisation), scaled by the regularization's ``coarse_offset`` (the median ratio of the two
optima measured on simulated lenses: within about 0.1 dex). On the dense backend, points far
from the maximum (a predicted step of 0.25 dex or more, and the first one) are factorised in
single precision. Close to it, the predicted maximum is evaluated in double precision with its
derivatives and accepted where its own Newton step is below ``lam_tol`` with a predicted gain in
log evidence below 0.1 nats. So one single-precision and one double-precision factorisation
usually suffice. The result is always that of a
double-precision evaluation. Small problems (up to 1,500 unknowns, where the traces are exact)
are searched in double precision throughout: a factorisation costs little there, and at high
S/N single precision cannot resolve ``lam H`` against ``P``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ._kernels import coarsen_upper
from .normal_equations import NormalEquations
from .regularization import Regularization
from .solvers import Factorization, NotPositiveDefiniteError, logdet_spd

log = logging.getLogger(__name__)

__all__ = ["BinnedEvidence", "Evaluation", "EvidenceSearch", "Prior", "binned_evidence", "restricted_prior",
           "search_evidence"]


@dataclass(frozen=True, eq=False)
class Prior:
    """A regularization restricted to the unknowns.

    Attributes
    ----------
    regularization : Regularization
    H : scipy.sparse.csr_matrix
        Its matrix over the unknowns.
    log_det : float
        ``log det H`` (exact for the full grid where the form knows it).
    """

    regularization: Regularization
    H: sp.csr_matrix
    log_det: float


def restricted_prior(regularization: Regularization, unknowns: np.ndarray, source_n: int) -> Prior:
    """``H`` of a ``source_n x source_n`` grid restricted to the flat pixel indices ``unknowns``."""
    H = regularization.matrix(source_n)
    logdet = None
    if unknowns.size < H.shape[0]:
        H = H[unknowns][:, unknowns].tocsr()
    else:
        logdet = regularization.log_det(source_n)  # analytic for the whole grid where known
    return Prior(regularization=regularization, H=H, log_det=logdet_spd(H) if logdet is None else logdet)


@dataclass(frozen=True, eq=False)
class EvidenceSearch:
    """The outcome of :func:`search_evidence` (normalised units of the normal equations).

    Attributes
    ----------
    lam : float
        The chosen (or given) strength.
    log_evidence : float
        ``log P(d | lam)``, natural log, in the data's own units.
    t : ndarray
        Most probable correction over the unknowns (the source is ``s0 + t``).
    chi2 : float
    evaluations : tuple of Evaluation
        Every factorisation, in order (the last is the result, always double precision).
    status : str
        ``"fixed"`` (lam given), ``"converged"``, ``"bound"`` or ``"steps"``.
    factorization : Factorization
        Factorised at the result's ``lam`` (for posterior variances and the like).
    coarse_seconds, seconds : float
        Time in the binned start and in the factorisations.
    """

    lam: float
    log_evidence: float
    t: np.ndarray
    chi2: float
    evaluations: tuple
    status: str
    factorization: Factorization
    coarse_seconds: float
    seconds: float


def search_evidence(neq: NormalEquations, prior: Prior, lam: Optional[float] = None,
                    lam_tol: float = 0.04, start: Optional["BinnedEvidence"] = None) -> EvidenceSearch:
    """Maximise the evidence over ``lam`` (normalised units), or evaluate it at a given ``lam``.

    ``neq.P`` is taken over by the factorisation (the dense backend uses it as storage).
    ``start``: :func:`binned_evidence` of the same problem and form, if already known (the search
    then starts from it instead of binning again).
    """
    t = time.perf_counter()
    x0 = None
    if lam is None and start is not None:
        if start.form != prior.regularization.name:
            raise ValueError(f"start was found for the form {start.form!r}, not {prior.regularization.name!r}")
        x0 = math.log(start.lam)
    elif lam is None and neq.n > _COARSE_FROM:
        # the maximum of a 2x2-binned source's evidence (cheap: a quarter of the unknowns) predicts
        # this one's to about 0.1 dex, so the search starts close and usually needs one or two steps
        try:
            x0 = math.log(_Binned.of(neq.P, neq.b, neq.unknowns, neq.source_n).search(prior.regularization).lam)
        except NotPositiveDefiniteError as exc:  # numerically, at some tiny lam: start from the balance
            log.debug("no start from the binned source (%s)", exc)
    coarse_seconds = time.perf_counter() - t
    fact = Factorization(neq.P, prior.H, backend=neq.backend)
    const = 0.5 * prior.log_det + neq.log_norm
    probes = _probes(neq.n) if neq.n > _EXACT_TRACE_MAX else None
    evidence = _Evidence(fact, prior.H, neq.b, neq.misfit, const, probes)
    # lam -> inf: the source is the prior mean and the evidence tends to its own likelihood log N(d; M s0, C)
    evidence.asymptote = -0.5 * neq.misfit(np.zeros(neq.n)) + neq.log_norm
    if lam is None:
        if x0 is None:
            x0 = math.log(_initial_lam(neq.P, prior.H, prior.regularization))
        single = neq.backend == "dense" and neq.n > _EXACT_TRACE_MAX
        status = _maximise_evidence(evidence, x0, lam_tol * _LN10, start_single=single, allow_single=single)
    else:
        evidence(math.log(lam), single=False, derivatives=False)
        status = "fixed"
    last = evidence.curve[-1]
    assert not last.single  # the search always ends on a double-precision evaluation
    return EvidenceSearch(lam=last.lam, log_evidence=last.log_evidence, t=last.source, chi2=last.chi2,
                          evaluations=tuple(evidence.curve), status=status, factorization=fact,
                          coarse_seconds=coarse_seconds, seconds=evidence.seconds)


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
# a search rising slowly towards lam -> inf stops within this many nats of the limit there (the prior
# mean's own likelihood): the sources along the way differ by less than the evidence can tell, while
# rounding makes the values jitter by ~0.1 nats at such lam
_ASYMPTOTE_TOL = 0.5
_COARSE_FROM = 1500  # unknowns above which the search starts from the 2x2-binned source's optimum
_COARSER_FROM = 256  # that search starts from the source binned once more where this leaves as many unknowns
# (the per-form starting offsets, medians over simulated lenses, are the regularizations'
# balance_offset and coarse_offset: realistic preset, 192^2 images, 48-80 pixel sources)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What one factorisation gave: the most probable correction ``t`` and its evidence at ``lam``
    (normalised units, see :mod:`baselines.normal_equations`)."""

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
        self.curve: list[Evaluation] = []
        self.seconds = 0.0
        #: the log evidence's limit as lam -> inf (the prior mean's likelihood), where known
        self.asymptote: Optional[float] = None

    def at_asymptote(self, p: "_Point") -> bool:
        """Whether the point ``p`` rises slowly (``0 < g < 1`` nat per e-fold of ``lam``) within
        ``_ASYMPTOTE_TOL`` of the limit as ``lam -> inf``: nothing is left to gain by going on (the data
        cannot improve on the prior mean), however the factorisations' rounding makes the values
        jitter at such ``lam``. A single-precision point is confirmed by a double-precision
        evaluation at the same ``lam`` (then the last in ``curve``)."""
        def close(value: float) -> bool:
            return self.asymptote - value < _ASYMPTOTE_TOL

        if self.asymptote is None or not (0.0 < p.g < 1.0 and close(p.log_evidence)):
            return False
        if self.curve[-1].single:
            return close(self(p.x, single=False, derivatives=False).log_evidence)
        return True

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
        self.curve.append(Evaluation(lam=lam, log_evidence=logev, single=fact.single, source=s, chi2=chi2))
        self.seconds += time.perf_counter() - ts
        return point


def _probes(n: int) -> np.ndarray:
    """``(n, _PROBES)`` Rademacher vectors for the Hutchinson trace estimates (fixed seed)."""
    return np.random.default_rng(_PROBE_SEED).choice(np.array([-1.0, 1.0]), size=(n, _PROBES))


def _initial_lam(P, H: sp.spmatrix, form: Regularization) -> float:
    """A scale-aware first guess: the strength at which the prior's trace equals the data's, times
    the median ratio of the evidence optimum to it on simulated lenses (per regularization form;
    the spread is about one decade either way)."""
    trace_p = float(np.trace(P)) if isinstance(P, np.ndarray) else float(P.diagonal().sum())
    return form.balance_offset * trace_p / float(H.diagonal().sum())


@dataclass(frozen=True)
class BinnedEvidence:
    """The evidence maximum of a problem with its source binned 2x2 (:func:`binned_evidence`).

    Attributes
    ----------
    form : str
        The regularization's name.
    lam : float
        The full-resolution problem's predicted optimum (normalised units): the binned optimum
        times the form's ``coarse_offset`` (good to about 0.1 dex).
    log_evidence : float
        The binned problem's log evidence at its optimum, up to a constant that depends on the data
        alone (the same for every form, so forms can be compared); NaN where not evaluated.
    """

    form: str
    lam: float
    log_evidence: float = math.nan


def binned_evidence(neq: NormalEquations, forms: Sequence[Regularization]) -> Optional[tuple[BinnedEvidence, ...]]:
    """The maxima of the evidence of ``neq`` with its source binned 2x2, one per regularization in
    ``forms`` (each with the binned grid's own matrix), with their values; None where the problem
    has up to ``_COARSE_FROM`` unknowns (whose full search costs little) or a binned problem cannot
    be factorised.

    The values compare the forms on the binned source at a sixty-fourth of a full factorisation's
    work each: on 80 validation-galaxy lenses with a RIM prior mean their differences followed the
    full problems' (correlation 0.96-0.998; the same winner on 78; docs/performance.md). The binned
    normal equations are formed once for all forms.
    """
    if neq.n <= _COARSE_FROM:
        return None
    try:
        pyramid = _Binned.of(neq.P, neq.b, neq.unknowns, neq.source_n)
        return tuple(pyramid.search(form, value=True) for form in forms)
    except NotPositiveDefiniteError as exc:
        log.debug("no binned evidence (%s)", exc)
        return None


@dataclass(frozen=True, eq=False)
class _Binned:
    """Normal equations ``U^T P U``, ``U^T b`` of a source binned 2x2 (``U``: each fine unknown in its
    block), the unknowns ``blocks`` (flat pixels of the ``n``-wide binned grid), and the same binned
    once more (``coarser``) where that still leaves over ``_COARSER_FROM`` unknowns, to start from."""

    P: np.ndarray
    b: np.ndarray
    blocks: np.ndarray
    n: int
    coarser: Optional["_Binned"] = None

    @classmethod
    def of(cls, P, b: np.ndarray, idx: np.ndarray, n_src: int, levels: int = 2) -> "_Binned":
        """Bin the normal equations of the unknowns ``idx`` of an ``n_src``-wide grid (``P`` dense with
        its upper triangle filled, or sparse; not modified), ``levels`` times at most."""
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
        coarser = cls.of(Pc, bc, blocks, nc, levels - 1) if levels > 1 and m >= 4 * _COARSER_FROM else None
        return cls(Pc, bc, blocks, nc, coarser)

    def search(self, form: Regularization, value: bool = False) -> BinnedEvidence:
        """The evidence-optimal ``lam`` of this binned problem for ``form``, times the form's
        ``coarse_offset`` (the median ratio of the finer problem's optimum to it on simulated lenses),
        and with ``value`` the binned evidence there (one more, double-precision factorisation).
        The search starts from the coarser level's result where there is one, else from the balance
        guess (:func:`_initial_lam`).

        The binned problem's own regularization matrix is ``H`` of the binned grid, so the optimal
        strengths differ by about the ratio of the pixel areas (a factor 4 down for ``zeroth``, 1 for
        ``gradient``, 4 up for ``curvature`` in the continuum limit); the measured ratios (192^2
        images, 48-80 pixel sources) scatter by 0.05-0.1 dex. The value omits ``d^T C^-1 d`` and
        the noise normalisation (the same for every form).
        """
        m = self.blocks.size
        H = form.matrix(self.n)
        full_grid = m == H.shape[0]
        if not full_grid:
            H = H[self.blocks][:, self.blocks].tocsr()
        const = 0.0
        if value:
            known = form.log_det(self.n) if full_grid else None
            const = 0.5 * (logdet_spd(H) if known is None else known)
        x0 = math.log(_initial_lam(self.P, H, form))
        if self.coarser is not None:
            with contextlib.suppress(NotPositiveDefiniteError):
                x0 = math.log(self.coarser.search(form).lam)
        # the factorisation takes over its matrix: a copy keeps this level's for the next form
        evidence = _Evidence(Factorization(self.P.copy(), H, backend="dense"), H, self.b, None, const, _probes(m))
        x = _predict_maximum(evidence, x0)
        logev = evidence(x, single=False, derivatives=False).log_evidence if value else math.nan
        return BinnedEvidence(form=form.name, lam=math.exp(x) * 10.0 ** form.coarse_offset, log_evidence=logev)


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


def _maximise_evidence(evaluate: _Evidence, x0: float, tol: float, start_single: bool, allow_single: bool) -> str:
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
    ``start_single``). Close to it (a smaller step), the predicted maximum is evaluated in double
    precision with its derivatives (their probes cost about a tenth of the factorisation) and
    accepted on the terms above, or the search goes on from it in double precision.

    Returns how it ended: ``"converged"``, ``"flat"`` (the evidence levels off towards an
    asymptote on a one-sided slope, gaining less than ``_GAIN_TOL`` per step, as for a prior mean
    the data cannot improve on, where the optimum is lam -> inf; see :func:`_flat`; or a
    point rising slowly is within ``_ASYMPTOTE_TOL`` of the known limit as lam -> inf,
    :meth:`_Evidence.at_asymptote`), ``"bound"`` (the evidence still
    rose at 12 decades from the start) or ``"steps"`` (60 steps without converging).
    """
    pts: list[_Point] = []
    x = x0
    single = start_single and allow_single
    for _ in range(60):
        p = evaluate(x, single)
        pts.append(p)
        step = _next_step(p, pts)
        # a Newton step's predicted gain is g^2 / (2 |g'|)
        if not single and abs(step) < tol and (p.dg < 0 and 0.5 * p.g * p.g / -p.dg < _GAIN_TOL):
            return "converged"
        if evaluate.at_asymptote(p):
            log.debug("the evidence is within %g nats of its limit as lam -> inf at lam = %.3g", _ASYMPTOTE_TOL,
                      math.exp(x))
            return "flat"
        if _flat(pts, step):
            # still rising, but by less than _GAIN_TOL over a full step: the evidence has levelled
            # off (e.g. a prior mean the data cannot improve on, where lam -> inf); more is not worth it
            log.debug("the evidence has levelled off at lam = %.3g", math.exp(x))
            if single:
                evaluate(x, False, derivatives=False)
            return "flat"
        if not x0 - _SPAN <= x + step <= x0 + _SPAN:
            log.warning("the evidence keeps rising towards lam = %.3g; stopping at the search bound", math.exp(x))
            if single:
                evaluate(x, False, derivatives=False)
            return "bound"
        if abs(step) < _SINGLE_UNTIL:
            # close: the next point, at the predicted maximum, is evaluated in double precision with
            # its derivatives and accepted by the test above (a parabola through a single- and a
            # double-precision value divides their rounding, ~0.01 nats, by the small step squared)
            single = False
            x += step
            continue
        single = allow_single
        x += step
    log.warning("the evidence search did not converge in 60 steps; using lam = %.4g", math.exp(x))
    evaluate(x, False, derivatives=False)
    return "steps"


def _flat(pts: list, step: float) -> bool:
    """Whether the evidence has levelled off on a one-sided slope: the last three points move the
    same way (the way the derivative points, which keeps its sign) over more than 0.75 dex, the last
    move gained less than ``_GAIN_TOL`` nats, and so does the predicted next step. An interior
    maximum never qualifies (the derivative changes sign near it), so this only ends searches that
    would otherwise creep towards lam -> 0 or inf, as with a prior mean the data cannot improve on."""
    if len(pts) < 3:
        return False
    a, b, c = pts[-3], pts[-2], pts[-1]
    sign = math.copysign(1.0, c.g)
    if not (a.g * sign > 0 and b.g * sign > 0 and step * sign > 0):
        return False
    if not ((b.x - a.x) * sign > 0 and (c.x - b.x) * sign > 0 and abs(c.x - a.x) > 0.75 * _LN10):
        return False
    predicted = 0.5 * c.g * c.g / -c.dg if c.dg < 0 else math.inf
    return 0.0 <= c.log_evidence - b.log_evidence < _GAIN_TOL and predicted < _GAIN_TOL


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
