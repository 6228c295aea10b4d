"""Regularized semilinear inversion (Warren & Dye 2003) with the regularization strength set by
the Bayesian evidence (Suyu et al. 2006), composed of three pieces:

1. :func:`baselines.normal_equations.normal_equations`: ``P t = b`` for any observation operator,
   ``P = Re(M^H C^-1 M)``, ``b = Re(M^H C^-1 (d - M s0))`` over the source pixels some used datum
   depends on (the unknowns; the others stay at the prior mean ``s0``, zero by default);
2. :func:`baselines.evidence.restricted_prior`: the regularization ``H`` on those unknowns;
3. :func:`baselines.evidence.search_evidence`: the ``lam`` of maximum evidence and the most
   probable source there, ``(P + lam H) t = b``, ``s = s0 + t``.

With a prior mean the prior is ``N(s0, (lam H)^-1)``: ``E_S = (s - s0)^T H (s - s0) / 2``, and the
evidence is ``log N(d; M s0, C + M (lam H)^-1 M^T)`` (see :mod:`baselines.evidence`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import scipy.optimize

from lensinv.validate import finite_float

from .evidence import BinnedEvidence, EvidenceSearch, binned_evidence, restricted_prior, search_evidence
from .normal_equations import NormalEquations, normal_equations
from .regularization import Regularization, get_regularization
from .solvers import NotPositiveDefiniteError

log = logging.getLogger(__name__)

__all__ = ["SELECTIONS", "InversionResult", "NotPositiveDefiniteError", "invert", "invert_by_evidence"]


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
        Name of the regularization.
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
    status : str
        How the search ended: ``"converged"``, ``"fixed"`` (lam given), ``"flat"`` (the evidence levels
        off towards large or small lam, within 0.1 nats), ``"bound"`` (the evidence
        still rose 12 decades from the start: lam is at the search bound) or ``"steps"``.
    prior_mean : ndarray or None
        ``(n_src, n_src)`` prior mean the source was regularized towards, if one was given.
    amplitudes : ndarray or None
        With a ``basis``: the most probable amplitudes of its columns (data units per unit of the
        columns), solved jointly with the source. ``chi2`` then includes their (weak) prior term
        ``sum(a^2 / basis_std^2)`` (see :mod:`baselines.normal_equations`).
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
    status: str = "converged"
    prior_mean: Optional[np.ndarray] = None
    amplitudes: Optional[np.ndarray] = None

    @property
    def reduced_chi2(self) -> float:
        """``chi2 / n_data``."""
        return self.chi2 / self.n_data


def invert(op: Any, image: np.ndarray, sigma: Union[float, np.ndarray],
           regularization: Union[str, Regularization] = "gradient", lam: Optional[float] = None,
           mask: Optional[np.ndarray] = None, *, prior_mean: Optional[np.ndarray] = None, return_std: bool = False,
           nonnegative: bool = False, backend: str = "auto", lam_tol: float = 0.04, unknowns: str = "reached",
           basis: Optional[np.ndarray] = None, basis_std: Union[float, np.ndarray, None] = None) -> InversionResult:
    """Reconstruct a source by regularized least squares with the Bayesian evidence.

    Parameters
    ----------
    op : observation operator
        ``lensinv.operator(...)`` or any object with ``shape``, ``apply``, ``adjoint``,
        ``source_grid`` and ``matrix`` or ``normal_matrix`` (DESIGN.md).
    image : ndarray
        Observed data (an image, ``(n_img, n_img)`` or flat; or complex visibilities), in the
        source's brightness units.
    sigma : float or ndarray
        Noise standard deviation: a scalar, or one per datum (the data's shape).
    regularization : {"zeroth", "gradient", "curvature"} or Regularization
        The form of H (see :mod:`baselines.regularization`), by name or as an instance.
    lam : float, optional
        Regularization strength (> 0, in inverse squared source units). None chooses it by
        maximising the evidence.
    mask : ndarray of bool, optional
        Data to use (True = use). Default: all.
    prior_mean : ndarray, optional
        ``s0`` (source grid, flat or 2-D): regularize ``s - s0`` instead of ``s``, e.g. towards a
        learned estimate. Unreached pixels keep ``s0``.
    return_std : bool
        Also compute the per-pixel posterior standard deviation.
    nonnegative : bool
        Return the most probable source under a non-negativity constraint at the chosen ``lam``
        (the evidence is that of the unconstrained model).
    backend : {"auto", "cholmod", "dense", "splu"}
        Factorisation (see :mod:`baselines.solvers`).
    lam_tol : float
        Tolerance on ``log10(lam)`` when maximising the evidence. The search also goes on until
        the predicted gain in log evidence from a further step is below 0.1 nats.
    unknowns : {"reached", "all"}
        Solve for the source pixels some used datum depends on (default), or for the whole grid
        (then the evidence of different operators on one grid shares one prior and can be
        compared, e.g. across lens models).
    basis : ndarray, optional
        ``(n_data, n_basis)`` extra linear columns (e.g. lens-light profiles convolved with the
        PSF) solved jointly with the source, with the Gaussian prior ``N(0, basis_std^2)`` on their
        amplitudes (not regularized), included in the evidence (:mod:`baselines.normal_equations`).
        Real data only; not with ``nonnegative``.
    basis_std : float or ndarray, optional
        The amplitudes' prior standard deviation (data units per unit of the columns); required
        with ``basis``.

    Returns
    -------
    InversionResult

    Raises
    ------
    ValueError
        Invalid input: non-finite data or sigma, sigma <= 0, shapes that do not match the
        operator, a mask that leaves no data, unknown options.
    TypeError
        ``op`` does not follow the observation-operator protocol.
    NotPositiveDefiniteError
        A factorisation failed.
    """
    t0 = time.perf_counter()
    form = get_regularization(regularization)
    lam = _check_lam(lam)
    lam_tol = _check_lam_tol(lam_tol)
    if basis is not None and nonnegative:
        raise ValueError("nonnegative is not supported with a basis")
    neq = normal_equations(op, image, sigma, mask, prior_mean=prior_mean, backend=backend, unknowns=unknowns,
                           basis=basis, basis_std=basis_std)
    return _solve(neq, form, lam, lam_tol, return_std, nonnegative, t0)


def _solve(neq: NormalEquations, form: Regularization, lam: Optional[float], lam_tol: float, return_std: bool,
           nonnegative: bool, t0: float, start: Optional[BinnedEvidence] = None) -> InversionResult:
    """:func:`invert` from its normal equations (whose ``P`` the factorisation takes over); ``start``:
    the binned search's result for this form, where known."""
    t = time.perf_counter()
    prior = restricted_prior(form, neq.unknowns, neq.source_n)
    P_kept = neq.P if nonnegative and neq.backend != "dense" else None
    search = search_evidence(neq, prior, None if lam is None else lam * neq.unit**2, lam_tol, start=start)
    timings = {"normal_matrix": neq.seconds, "coarse_search": search.coarse_seconds,
               "analysis": time.perf_counter() - t - search.seconds - search.coarse_seconds,
               "factorisations": search.seconds}
    if search.status == "bound":
        log.warning("the evidence keeps rising towards lam = %.3g; stopped at the search bound",
                    search.lam / neq.unit**2)
    t = time.perf_counter()
    std = _posterior_std(search, neq) if return_std else None
    t_opt, chi2 = search.t, search.chi2
    if nonnegative:
        A = search.factorization.full_matrix() if neq.backend == "dense" else (P_kept + search.lam * prior.H).tocsr()
        lower = -neq.prior_mean[neq.unknowns] if neq.prior_mean is not None else np.zeros(neq.n)
        t_opt = _nonnegative(A, neq.b, t_opt, lower)
        chi2 = neq.misfit(t_opt)
    timings["extras"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return _result(neq, search, form, t_opt, chi2, std, timings)


#: How :func:`invert_by_evidence` compares the regularization forms.
SELECTIONS = ("full", "binned")


def invert_by_evidence(op: Any, image: np.ndarray, sigma: Union[float, np.ndarray],
                       forms: tuple = ("gradient", "curvature"), *, select: str = "full",
                       **kwargs: Any) -> InversionResult:
    """:func:`invert` with each regularization in ``forms``; the result of highest evidence.

    Parameters
    ----------
    op, image, sigma
        As for :func:`invert`.
    forms : sequence of str or Regularization
        The candidates (at least one).
    select : {"full", "binned"}
        ``"full"``: solve with every form and keep the highest evidence. ``"binned"``: compare the
        forms by the evidence of the same problem with its source binned 2x2 (the start of every
        large search anyway, :func:`baselines.evidence.binned_evidence`: a sixty-fourth of a
        factorisation's work) and solve with the winner alone, which halves the time for two forms.
        Problems of up to 1,500 unknowns, a given ``lam`` and ``nonnegative`` are compared in
        full. On 80 validation-galaxy lenses with a RIM prior mean (rim+wd) the binned choice
        agreed with the full one on most lenses, and where it did not the two forms' sources
        differed by under 1% in RMSE (docs/performance.md).
    **kwargs
        Passed to :func:`invert` (``mask``, ``prior_mean``, ``lam_tol``, ...; not ``regularization``).

    Examples
    --------
    The learned-prior route of issue 13 (``rim+wd``): a network's estimate as the prior mean,

    >>> s0 = model.reconstruct(op, image, sigma)                       # doctest: +SKIP
    >>> res = invert_by_evidence(op, image, sigma, prior_mean=s0)       # doctest: +SKIP
    """
    if "regularization" in kwargs:
        raise ValueError("invert_by_evidence chooses the regularization: pass forms=..., not regularization")
    forms = tuple(get_regularization(f) for f in forms)
    if not forms:
        raise ValueError("forms must name at least one regularization")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    # invert's own signature gives the options and their defaults (a TypeError for unknown ones)
    a = inspect.signature(invert).bind(op, image, sigma, **kwargs)
    a.apply_defaults()
    a = a.arguments
    if a["nonnegative"] or len(forms) == 1:
        return max((invert(op, image, sigma, regularization=f, **kwargs) for f in forms), key=lambda r: r.log_evidence)
    # one set of normal equations serves every form (each factorisation takes over a copy of P)
    t0 = time.perf_counter()
    lam, lam_tol = _check_lam(a["lam"]), _check_lam_tol(a["lam_tol"])
    neq = normal_equations(op, image, sigma, a["mask"], prior_mean=a["prior_mean"], backend=a["backend"],
                           unknowns=a["unknowns"], basis=a["basis"], basis_std=a["basis_std"])
    # the binned searches (each large search's start) on normal equations binned once for all forms
    binned = binned_evidence(neq, forms) if lam is None else None
    starts = [None] * len(forms) if binned is None else list(binned)
    if select == "binned" and binned is not None:
        best = max(range(len(forms)), key=lambda i: starts[i].log_evidence)
        log.debug("binned evidence of %s: %s; solving with %s", [f.name for f in forms],
                  [round(s.log_evidence, 2) for s in starts], forms[best].name)
        return _solve(neq, forms[best], lam, lam_tol, a["return_std"], False, t0, start=starts[best])
    results = [_solve(dataclasses.replace(neq, P=neq.P.copy()) if i < len(forms) - 1 else neq, f, lam, lam_tol,
                      a["return_std"], False, t0, start=starts[i]) for i, f in enumerate(forms)]
    return max(results, key=lambda r: r.log_evidence)


def _check_lam_tol(lam_tol: float) -> float:
    value = finite_float("lam_tol", lam_tol)
    if value <= 0:
        raise ValueError(f"lam_tol must be a finite number > 0 (dex), got {lam_tol!r}")
    return value


def _check_lam(lam: Optional[float]) -> Optional[float]:
    if lam is None:
        return None
    value = finite_float("lam", lam)
    if value <= 0:
        raise ValueError(f"lam must be a finite number > 0 or None, got {lam!r}")
    return value


def _posterior_std(search: EvidenceSearch, neq: NormalEquations) -> np.ndarray:
    std = np.full(neq.source_n**2, np.nan)
    std[neq.unknowns] = np.sqrt(search.factorization.inverse_diagonal()) * neq.unit
    return std.reshape(neq.source_n, neq.source_n)


def _result(neq: NormalEquations, search: EvidenceSearch, form: Regularization, t_opt: np.ndarray, chi2: float,
            std: Optional[np.ndarray], timings: dict) -> InversionResult:
    n = neq.source_n
    reached = np.zeros(n * n, dtype=bool)
    reached[neq.unknowns] = True
    curve = search.evaluations
    u2 = neq.unit**2
    return InversionResult(
        source=(neq.full_source(t_opt) * neq.unit).reshape(n, n), lam=search.lam / u2,
        log_evidence=search.log_evidence, chi2=chi2, n_data=neq.n_data, n_unknowns=neq.n,
        regularization=form.name, reached=reached.reshape(n, n), source_std=std,
        backend=search.factorization.backend, evaluations=len(curve),
        evidence_curve=tuple(sorted((e.lam / u2, e.log_evidence) for e in curve)),
        single_precision_evaluations=sum(e.single for e in curve), timings=timings, status=search.status,
        prior_mean=None if neq.prior_mean is None else (neq.prior_mean * neq.unit).reshape(n, n),
        amplitudes=None if neq.amplitudes is None else neq.amplitudes(t_opt) * neq.unit)


def _nonnegative(A, b: np.ndarray, s0: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """argmin 1/2 t^T A t - b^T t subject to t >= lower (L-BFGS-B from the clipped unconstrained
    solution); ``lower = -s0`` keeps the source ``s0 + t`` non-negative."""
    scale = max(float(np.abs(b).max()), 1e-300)

    def fun(s):
        g = A @ s
        return (0.5 * s @ g - b @ s) / scale, (g - b) / scale

    res = scipy.optimize.minimize(fun, np.maximum(s0, lower), jac=True, method="L-BFGS-B",
                                  bounds=list(zip(lower, [None] * s0.size)),
                                  options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-10})
    return np.maximum(res.x, lower)
