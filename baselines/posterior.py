"""Posterior samples of non-linear parameters by affine-invariant ensemble MCMC (emcee).

Used by :func:`baselines.fit_lens` (``FitConfig.posterior_steps``): the log posterior of the lens
parameters is the log evidence of the pixelated inversion (the source and lens-light amplitudes
marginalised analytically) plus a uniform prior within the fit's bounds, and the walkers start
from the Laplace approximation at the optimum.

Why emcee: the evidence here costs 0.1-1.5 s and is noisy on small scales (pixels enter and
leave the mask of traced rays), the posterior is unimodal about the optimum the fit has already
found, and its shape is dominated by strong linear degeneracies (``theta_E`` against the
ellipticity and the shear). An affine-invariant ensemble sampler is insensitive to such
correlations without tuning, needs no gradients, and spends every evaluation on the posterior's
bulk; a nested sampler (dynesty, nautilus) would spend most of its evaluations on the prior's
volume to compute an evidence over lens parameters that the fit does not need. emcee is small,
pure Python and maintained.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lensinv.validate import int_at_least

log = logging.getLogger(__name__)

__all__ = ["PosteriorSamples", "sample_posterior"]


@dataclass(frozen=True)
class PosteriorSamples:
    """Samples of the posterior after burn-in.

    Attributes
    ----------
    names : tuple of str
        The sampled parameters (the columns of ``samples``).
    samples : ndarray
        ``(n, len(names))`` samples (all walkers, burn-in discarded), in the sampler's units.
    log_posterior : ndarray
        ``(n,)`` log posterior of each sample (log evidence plus the constant log prior).
    acceptance_fraction : float
        Mean over the walkers.
    autocorr_steps : ndarray
        ``(len(names),)`` integrated autocorrelation time per parameter (steps), estimated from
        the kept chain without emcee's length check: a chain much shorter than 50 of them gives a
        noisy estimate and correlated samples (``converged``).
    walkers, steps, burn : int
        Walkers, steps per walker run, and the first steps discarded.
    """

    names: tuple
    samples: np.ndarray
    log_posterior: np.ndarray
    acceptance_fraction: float
    autocorr_steps: np.ndarray
    walkers: int
    steps: int
    burn: int

    @property
    def converged(self) -> bool:
        """The kept chain spans at least 10 autocorrelation times of every parameter (a loose
        criterion for the standard deviations; emcee's guide asks 50 for its tau itself)."""
        kept = self.steps - self.burn
        return bool(np.all(np.isfinite(self.autocorr_steps)) and kept >= 10 * float(np.max(self.autocorr_steps)))


def sample_posterior(log_prob: Callable[[np.ndarray], float], x: np.ndarray, covariance: np.ndarray,
                     bounds: list[tuple[float, float]], names: tuple, *, steps: int, walkers: int = 0,
                     burn: float = 0.5, seed: int = 0) -> PosteriorSamples:
    """Sample ``exp(log_prob)`` times a uniform prior within ``bounds`` with emcee.

    Parameters
    ----------
    log_prob : callable
        ``x -> float``: the log likelihood (here: log evidence) at a parameter vector; ``-inf``
        where undefined.
    x : ndarray
        ``(dim,)`` the optimum (inside ``bounds``).
    covariance : ndarray
        ``(dim, dim)`` its Laplace covariance: the walkers start from ``N(x, covariance)``.
    bounds : list of (lo, hi)
        The uniform prior's support per parameter.
    names : tuple of str
        Parameter names (``dim`` of them).
    steps : int
        Steps per walker (>= 2).
    walkers : int
        Walkers (even, >= 2 dim + 2); 0: ``2 dim + 2``.
    burn : float
        Fraction of the steps discarded as burn-in (0 <= burn < 1).
    seed : int
        Seeds the walkers' start and the sampler's moves (deterministic).

    Returns
    -------
    PosteriorSamples

    Raises
    ------
    ImportError
        emcee is not installed.
    ValueError
        Invalid inputs (naming the parameter), or no starting point of finite posterior.
    """
    emcee = _import_emcee()
    x = np.asarray(x, dtype=np.float64)
    dim = x.size
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (dim, dim) or not np.all(np.isfinite(cov)):
        raise ValueError(f"covariance must be a finite ({dim}, {dim}) matrix, got shape {cov.shape}")
    if len(bounds) != dim or len(names) != dim:
        raise ValueError(f"bounds and names must have one entry per parameter ({dim})")
    lo = np.array([b[0] for b in bounds], dtype=np.float64)
    hi = np.array([b[1] for b in bounds], dtype=np.float64)
    if not np.all((lo <= x) & (x <= hi)):
        raise ValueError("x must lie inside bounds")
    int_at_least("steps", steps, 2)
    walkers = walkers or 2 * dim + 2
    int_at_least("walkers", walkers, 2 * dim + 2)
    if walkers % 2:
        raise ValueError(f"walkers must be even (emcee's ensemble halves), got {walkers}")
    if not (0 <= burn < 1):
        raise ValueError(f"burn must be in [0, 1), got {burn!r}")

    def log_posterior(p: np.ndarray) -> float:
        if not np.all((lo <= p) & (p <= hi)):
            return -math.inf
        v = float(log_prob(p))
        return v if math.isfinite(v) else -math.inf

    rng = np.random.default_rng(seed)
    start, start_lp = _start(log_posterior, x, cov, lo, hi, walkers, rng)
    sampler = emcee.EnsembleSampler(walkers, dim, log_posterior)
    sampler.random_state = np.random.RandomState(seed).get_state()
    sampler.run_mcmc(emcee.State(start, log_prob=start_lp), steps, progress=False)
    n_burn = int(burn * steps)
    chain = sampler.get_chain(discard=n_burn)  # (steps - burn, walkers, dim)
    tau = _autocorr(chain, emcee)
    acc = float(np.mean(sampler.acceptance_fraction))
    log.info("posterior: %d walkers x %d steps (%d burn-in), acceptance %.2f, autocorrelation %s steps",
             walkers, steps, n_burn, acc, np.round(tau, 1).tolist())
    return PosteriorSamples(names=tuple(names), samples=chain.reshape(-1, dim),
                            log_posterior=sampler.get_log_prob(discard=n_burn).reshape(-1),
                            acceptance_fraction=acc, autocorr_steps=tau, walkers=walkers, steps=steps,
                            burn=n_burn)


def _import_emcee():
    try:
        import emcee
    except ImportError as exc:  # pragma: no cover - emcee is a dependency
        raise ImportError("posterior sampling needs emcee (pip install emcee)") from exc
    return emcee


def _start(log_posterior: Callable[[np.ndarray], float], x: np.ndarray, cov: np.ndarray, lo: np.ndarray,
           hi: np.ndarray, walkers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Walkers drawn from ``N(x, cov)`` (its eigenvalues floored, so a degenerate covariance still
    spreads them), each redrawn up to ten times where outside the prior or of no finite value.
    Returns the walkers and their log posterior."""
    e, U = np.linalg.eigh(0.5 * (cov + cov.T))
    floor = 1e-12 * max(float(e.max()), 1e-300)
    L = U * np.sqrt(np.maximum(e, floor))
    out = np.empty((walkers, x.size))
    lp = np.empty(walkers)
    for k in range(walkers):
        for _ in range(10):
            p = x + L @ rng.normal(size=x.size)
            v = log_posterior(p)
            if math.isfinite(v):
                break
        else:
            p = x + 1e-3 * (L @ rng.normal(size=x.size))  # close to the optimum: finite there
            v = log_posterior(p)
            if not math.isfinite(v):
                raise ValueError("no starting point of finite posterior near x: check x and covariance")
        out[k], lp[k] = p, v
    return out, lp


def _autocorr(chain: np.ndarray, emcee) -> np.ndarray:
    if chain.shape[0] < 2:
        return np.full(chain.shape[2], math.nan)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # a walker that never moved: NaN, not a warning
            return np.asarray(emcee.autocorr.integrated_time(chain, tol=0), dtype=np.float64)
    except Exception as exc:  # emcee raises on degenerate chains (e.g. no move accepted)
        log.warning("posterior: no autocorrelation time (%s)", exc)
        return np.full(chain.shape[2], math.nan)
