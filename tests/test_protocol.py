"""The observation-operator protocol: any conforming object works with the solvers; the public
dot test; the normal matrix; prior means; user regularizations."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp

import baselines
import lensinv
from baselines.evidence import _ASYMPTOTE_TOL
from baselines import invert
from baselines.regularization import Regularization, regularization_matrix
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid
from lensinv.testing import dot_test

LENS = Lens(SIE(0.6, 0.8, 0.5), ExternalShear(0.03, 0.4))
IMG = ImageGrid(40, 0.05)
SRC = SourceGrid(12, 0.8)


class MatrixOnly:
    """Only the protocol: shape, apply, adjoint, source_grid, matrix."""

    def __init__(self, op):
        self._op = op
        self.shape = op.shape
        self.source_grid = op.source_grid
        self.matrix = op.matrix

    def apply(self, s):
        return self.matrix @ np.asarray(s).reshape(-1)

    def adjoint(self, d):
        return self.matrix.T @ np.asarray(d).reshape(-1)


class NormalOnly:
    """No explicit matrix: shape, apply, adjoint, source_grid, normal_matrix."""

    def __init__(self, op):
        self._M = op.matrix
        self.shape = op.shape
        self.source_grid = op.source_grid

    def apply(self, s):
        return self._M @ np.asarray(s).reshape(-1)

    def adjoint(self, d):
        return self._M.T @ np.asarray(d).reshape(-1)

    def normal_matrix(self, weights, unknowns=None, dense=True):
        P = (self._M.T @ sp.diags(np.asarray(weights).reshape(-1)) @ self._M).toarray()
        return P if unknowns is None else P[np.ix_(unknowns, unknowns)]


def _blob(grid, x0=0.03, y0=-0.02, w=0.12):
    x, y = grid.coordinates()
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / w**2)


@pytest.fixture
def problem(rng):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.1, IMG.pixel_scale), supersample=2)
    s = _blob(SRC)
    return op, s, op.apply(s) + rng.normal(0, 0.02, IMG.shape)


@pytest.mark.parametrize("wrap", [MatrixOnly, NormalOnly])
@pytest.mark.parametrize("form", ["gradient", "curvature"])
def test_minimal_operators_give_the_same_inversion(problem, wrap, form):
    op, _, d = problem
    ref = invert(op, d, 0.02, regularization=form)
    got = invert(wrap(op), d.ravel(), 0.02, regularization=form)  # flat data are fine too
    assert got.lam == pytest.approx(ref.lam, rel=1e-8)
    assert got.log_evidence == pytest.approx(ref.log_evidence, rel=1e-10, abs=1e-7)
    assert got.chi2 == pytest.approx(ref.chi2, rel=1e-9)
    np.testing.assert_allclose(got.source, ref.source, rtol=1e-8, atol=1e-10)
    assert np.array_equal(got.reached, ref.reached)


def test_not_an_operator_is_refused(problem):
    op, _, d = problem
    with pytest.raises(TypeError, match="lacks apply, adjoint"):
        invert(op.matrix, d, 0.02)
    with pytest.raises(ValueError, match="observation operator"):  # also a ValueError, like all bad input
        invert(object(), d, 0.02)
    assert isinstance(op, lensinv.ObservationOperator)


def test_dot_test_passes_real_operators_and_catches_a_wrong_adjoint(problem):
    op, _, _ = problem
    assert dot_test(op, rtol=1e-12).relative_error < 1e-12
    assert dot_test(lensinv.operator(LENS, IMG, SRC), rtol=1e-12).passed

    class Wrong(MatrixOnly):
        def adjoint(self, d):
            return 1.001 * super().adjoint(d)

    with pytest.raises(AssertionError, match="dot test failed"):
        dot_test(Wrong(op))
    assert not dot_test(Wrong(op), raise_error=False).passed


@pytest.mark.parametrize("psf", [True, False])
def test_normal_matrix_equals_the_dense_product(rng, psf):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.1, IMG.pixel_scale) if psf else None,
                          supersample=2)
    w = rng.uniform(0.5, 2.0, IMG.size)
    w[:100] = 0.0  # masked
    M = op.matrix.toarray()
    ref = M.T @ (w[:, None] * M)
    idx = np.flatnonzero(np.abs(M[w > 0]).sum(axis=0) > 0)[::2]
    dense = op.normal_matrix(w, unknowns=idx)
    np.testing.assert_allclose(np.triu(dense), np.triu(ref[np.ix_(idx, idx)]), rtol=1e-11, atol=1e-12)
    sparse = op.normal_matrix(w, unknowns=idx, dense=False)
    np.testing.assert_allclose(sparse.toarray(), ref[np.ix_(idx, idx)], rtol=1e-11, atol=1e-12)


def _dense_posterior(op, d, sigma, lam, H, s0):
    """Independent: log N(d; M s0, C + M (lam H)^-1 M^T) and the posterior mean and std."""
    M = op.matrix.toarray()
    reached = np.abs(M).sum(axis=0) > 0
    Mr = M[:, reached]
    Hr = H.toarray()[np.ix_(reached, reached)]
    dd = d.ravel() - M @ s0.ravel()
    cov = sigma**2 * np.eye(dd.size) + Mr @ np.linalg.solve(lam * Hr, Mr.T)
    _, logdet = np.linalg.slogdet(cov)
    logev = -0.5 * dd @ np.linalg.solve(cov, dd) - 0.5 * logdet - 0.5 * dd.size * math.log(2 * math.pi)
    A = Mr.T @ Mr / sigma**2 + lam * Hr
    s = s0.ravel().copy()
    s[reached] += np.linalg.solve(A, Mr.T @ dd / sigma**2)
    std = np.full(s.size, np.nan)
    std[reached] = np.sqrt(np.diag(np.linalg.inv(A)))
    chi2 = float(np.sum((M @ s - d.ravel()) ** 2) / sigma**2)
    return logev, s, std, chi2


def test_prior_mean_matches_the_dense_computation(problem, rng):
    op, s, d = problem
    s0 = 0.9 * s + 0.05 * rng.normal(size=s.shape)  # e.g. a learned estimate
    lam = 3.0
    res = invert(op, d, 0.02, regularization="gradient", lam=lam, prior_mean=s0, return_std=True)
    logev, s_ref, std_ref, chi2_ref = _dense_posterior(op, d, 0.02, lam, regularization_matrix("gradient", SRC.n), s0)
    assert res.log_evidence == pytest.approx(logev, rel=1e-9)
    np.testing.assert_allclose(res.source.ravel(), s_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.source_std.ravel(), std_ref, rtol=1e-8)
    assert res.chi2 == pytest.approx(chi2_ref, rel=1e-9)
    np.testing.assert_array_equal(res.prior_mean, s0)
    # a good prior mean is worth evidence: more than the zero-mean prior at its own optimum
    assert invert(op, d, 0.02, prior_mean=s).log_evidence > invert(op, d, 0.02).log_evidence
    # the search around a prior mean still finds a maximum
    best = invert(op, d, 0.02, prior_mean=s0)
    for f in (10**-0.1, 10**0.1):
        assert invert(op, d, 0.02, prior_mean=s0, lam=best.lam * f).log_evidence < best.log_evidence


def test_prior_mean_with_nonnegativity(problem):
    op, s, d = problem
    res = invert(op, d, 0.02, lam=3.0, prior_mean=0.5 * s, nonnegative=True)
    assert res.source.min() >= 0.0


def test_prior_mean_is_validated(problem):
    op, _, d = problem
    for bad, msg in [(np.zeros((5, 5)), "prior_mean must have shape"), (np.full(SRC.shape, np.nan), "NaN"),
                     (np.full(SRC.shape, "a"), "prior_mean")]:
        with pytest.raises(ValueError, match=msg):
            invert(op, d, 0.02, prior_mean=bad)


class Weighted(Regularization):
    """A user's regularization: zeroth order with a per-pixel weight rising to the grid's edge."""

    name = "edge-weighted"

    def matrix(self, n):
        y, x = np.mgrid[:n, :n] - (n - 1) / 2
        return sp.diags(1.0 + (x**2 + y**2).ravel() / n**2, format="csr")


def test_a_user_regularization_is_one_class(problem):
    op, _, d = problem
    form = Weighted()
    res = invert(op, d, 0.02, regularization=form, lam=2.0)
    logev, s_ref, _, _ = _dense_posterior(op, d, 0.02, 2.0, form.matrix(SRC.n), np.zeros(SRC.shape))
    assert res.regularization == "edge-weighted"
    assert res.log_evidence == pytest.approx(logev, rel=1e-9)
    np.testing.assert_allclose(res.source.ravel(), s_ref, rtol=1e-8, atol=1e-10)
    assert invert(op, d, 0.02, regularization=form).status == "converged"
    assert "gradient" in baselines.FORMS and isinstance(baselines.Gradient(), Regularization)


@pytest.mark.parametrize("form", ["zeroth", "gradient"])
def test_high_signal_to_noise_small_problem_finds_the_maximum(form):
    """The probe case: 48x48 image, 24x24 source, noise 1e-6 of the peak; the search used to stop at
    its upper bound with the evidence 3.5e5..3.5e13 nats below the maximum near lam ~ 100."""
    img, src = ImageGrid(48, 0.05), SourceGrid(24, 1.2)
    op = lensinv.operator(Lens(SIE(0.7, 0.8, 0.3)), img, src, psf=lensinv.gaussian_psf(0.1, 0.05), supersample=2)
    s = _blob(src, w=0.15)
    clean = op.apply(s)
    sigma = 1e-6 * clean.max()
    d = clean + np.random.default_rng(5).normal(0, sigma, clean.shape)
    res = invert(op, d, sigma, regularization=form)
    assert res.status == "converged"
    grid = res.lam * 10.0 ** np.linspace(-1.0, 1.0, 11)
    scan = [invert(op, d, sigma, regularization=form, lam=lam).log_evidence for lam in grid]
    assert res.log_evidence >= max(scan) - 0.1
    assert res.reduced_chi2 < 1.5


def test_units_do_not_matter(problem):
    """Data x c and sigma x c: source x c, lam / c^2, log evidence - N_d log c; no overflow at 1e-80."""
    op, _, d = problem
    ref = invert(op, d, 0.02, regularization="gradient")
    for c in (1e-80, 1e150):
        got = invert(op, d * c, 0.02 * c, regularization="gradient")
        np.testing.assert_allclose(got.source, ref.source * c, rtol=1e-9, atol=1e-12 * c)
        assert got.lam == pytest.approx(ref.lam / c**2, rel=1e-9)
        assert got.log_evidence == pytest.approx(ref.log_evidence - d.size * math.log(c), rel=1e-12)
        assert got.chi2 == pytest.approx(ref.chi2, rel=1e-9)


@pytest.mark.parametrize("lam", ["abc", True, 1j, -1.0, np.inf])
def test_bad_lam_is_named(problem, lam):
    op, _, d = problem
    with pytest.raises(ValueError, match="lam"):
        invert(op, d, 0.02, lam=lam)


def test_complex_data_needs_a_complex_operator(problem):
    op, _, d = problem
    with pytest.raises(ValueError, match="complex"):
        invert(op, d + 1j, 0.02)


def test_a_prior_mean_the_data_cannot_improve_on_stops_early(problem, rng):
    """With the true source as the prior mean the evidence rises towards lam -> inf and levels off:
    the search stops once a maximal step gains < 0.1 nats, instead of walking 12 decades."""
    op, s, _ = problem
    d = op.apply(s) + rng.normal(0, 0.02, IMG.shape)
    res = invert(op, d, 0.02, prior_mean=s)
    assert res.status in ("flat", "converged") and res.evaluations <= 8
    np.testing.assert_allclose(res.source, s, atol=0.05 * s.max())
    far = invert(op, d, 0.02, prior_mean=s, lam=res.lam * 1e4).log_evidence
    assert far - res.log_evidence < _ASYMPTOTE_TOL  # nothing much left to gain
    # the limit as lam -> inf is the prior mean's own likelihood, log N(d; M s, C)
    r = (d.ravel() - np.ravel(op.apply(s))) / 0.02
    limit = -0.5 * r @ r - d.size * (0.5 * math.log(2 * math.pi) + math.log(0.02))
    assert abs(far - limit) < 0.01
    assert limit - res.log_evidence < _ASYMPTOTE_TOL


def test_the_asymptote_stops_a_search_whose_values_jitter(problem, rng, monkeypatch):
    """Rounding at large lam makes the evidence jitter by ~0.1 nats, which the level-off test
    (gains below 0.1 nats) can miss for tens of steps: the known limit as lam -> inf stops it."""
    import baselines.evidence as ev

    op, s, _ = problem
    d = op.apply(s) + rng.normal(0, 0.02, IMG.shape)
    jitter = np.random.default_rng(5)
    call = ev._Evidence.__call__

    def noisy(self, x, single, derivatives=True):
        p = call(self, x, single, derivatives)
        self.curve[-1] = dataclasses.replace(self.curve[-1], log_evidence=self.curve[-1].log_evidence
                                             + jitter.uniform(-0.15, 0.15))
        return dataclasses.replace(p, log_evidence=self.curve[-1].log_evidence)

    monkeypatch.setattr(ev._Evidence, "__call__", noisy)
    res = invert(op, d, 0.02, prior_mean=s)
    assert res.status == "flat" and res.evaluations <= 8
    monkeypatch.setattr(ev._Evidence, "at_asymptote", lambda self, p: False)
    assert invert(op, d, 0.02, prior_mean=s).evaluations > res.evaluations  # without it: more steps


def test_invert_by_evidence_is_the_best_of_separate_inversions(problem, rng):
    """One set of normal equations shared by the forms gives what separate inversions give; the form
    of highest evidence wins; invert's options pass through and others are refused."""
    op, s, d = problem
    mask = np.ones(d.shape, bool)
    mask[:3] = False
    prior = 0.8 * s
    kw = {"mask": mask, "prior_mean": prior, "lam_tol": 0.02}
    separate = [invert(op, d, 0.02, regularization=f, **kw) for f in ("gradient", "curvature", "zeroth")]
    best = max(separate, key=lambda r: r.log_evidence)
    got = baselines.invert_by_evidence(op, d, 0.02, forms=("gradient", "curvature", "zeroth"), **kw)
    assert got.regularization == best.regularization
    assert got.lam == pytest.approx(best.lam, rel=1e-10)
    assert got.log_evidence == pytest.approx(best.log_evidence, rel=1e-12)
    np.testing.assert_allclose(got.source, best.source, rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match="bogus"):
        baselines.invert_by_evidence(op, d, 0.02, bogus=1)
    with pytest.raises(ValueError, match="regularization"):
        baselines.invert_by_evidence(op, d, 0.02, regularization="gradient")
    with pytest.raises(ValueError, match="lam_tol"):
        baselines.invert_by_evidence(op, d, 0.02, lam_tol=-1.0)
