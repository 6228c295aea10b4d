"""Warren-Dye inversion with the Suyu et al. (2006) evidence."""

import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp

import baselines
import lensinv
from baselines import invert
from baselines import solvers
from baselines.regularization import log_det_exact, regularization_matrix
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid

LENS = Lens(SIE(0.6, 0.8, 0.5), ExternalShear(0.03, 0.4))
IMG = ImageGrid(40, 0.05)
SRC = SourceGrid(12, 0.8)


def _blob(grid, x0=0.03, y0=-0.02, w=0.12):
    x, y = grid.coordinates()
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / w**2)


def _problem(rng, psf=True, sigma=0.02):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.1, IMG.pixel_scale) if psf else None,
                          supersample=2)
    s = _blob(SRC)
    d = op.apply(s) + rng.normal(0, sigma, IMG.shape)
    return op, s, d


@pytest.mark.parametrize("form", ["zeroth", "gradient", "curvature"])
def test_H_symmetric_positive_definite_with_the_right_null_space(form):
    n = 10
    H = regularization_matrix(form, n)
    assert (abs(H - H.T)).max() == 0
    ev = np.linalg.eigvalsh(H.toarray())
    assert ev.min() > 0  # zero beyond the edge: a proper prior
    assert np.sum(np.log(ev)) == pytest.approx(log_det_exact(form, n), rel=1e-10)
    y, x = np.mgrid[:n, :n].astype(float)
    interior = lambda k: (slice(k, n - k), slice(k, n - k))  # noqa: E731
    if form == "gradient":  # constants cost nothing away from the edge
        hs = (H @ np.full(n * n, 3.0)).reshape(n, n)
        np.testing.assert_allclose(hs[interior(1)], 0, atol=1e-12)
        assert np.abs(hs).max() > 0
    if form == "curvature":  # nor do planes, including the x*y twist
        for f in (np.ones_like(x), x, y, 2 + 0.5 * x - 0.3 * y + 0.1 * x * y):
            hs = (H @ f.ravel()).reshape(n, n)
            np.testing.assert_allclose(hs[interior(2)], 0, atol=1e-10)
        # while curvature costs energy everywhere, and H (fourth order) acts on quartics
        assert (x**2).ravel() @ H @ (x**2).ravel() > 4 * (n - 2) * n
        np.testing.assert_allclose((H @ (x**4).ravel()).reshape(n, n)[interior(2)], 24.0)
    if form == "zeroth":
        assert (H - sp.identity(n * n)).nnz == 0


def test_noise_free_small_lam_recovers_the_source():
    img, src = ImageGrid(60, 0.04), SourceGrid(10, 0.8)  # many image pixels per source pixel
    op = lensinv.operator(Lens(SIE(0.5, 0.9, 0.2)), img, src, supersample=3)
    s = _blob(src, 0.02, 0.0, 0.15)
    res = invert(op, op.apply(s), 1e-3, lam=1e-10, regularization="gradient")
    assert res.reached.all()
    np.testing.assert_allclose(res.source, s, atol=1e-6)
    assert res.chi2 < 1e-6


def _dense_log_evidence(op, d, sigma_map, use, lam, form):
    """Independent: log N(d; 0, C + M (lam H)^-1 M^T) over the used pixels, the reached unknowns."""
    M = op.matrix.toarray()[use.ravel()]
    reached = np.abs(M).sum(axis=0) > 0
    M = M[:, reached]
    H = regularization_matrix(form, op.source_grid.n).toarray()[np.ix_(reached, reached)]
    cov = np.diag(sigma_map.ravel()[use.ravel()] ** 2) + M @ np.linalg.solve(lam * H, M.T)
    dd = d.ravel()[use.ravel()]
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * dd @ np.linalg.solve(cov, dd) - 0.5 * logdet - 0.5 * dd.size * math.log(2 * math.pi)


@pytest.mark.parametrize("form", ["zeroth", "gradient", "curvature"])
def test_log_evidence_equals_dense_marginal_likelihood(rng, form):
    op, s, d = _problem(rng)
    sigma_map = 0.02 * (1 + rng.uniform(0, 1, IMG.shape))
    d = op.apply(s) + rng.normal(0, 1, IMG.shape) * sigma_map
    use = np.ones(IMG.shape, bool)
    use[:, :8] = False  # a mask that leaves some source pixels unreached
    for lam in (0.3, 30.0):
        res = invert(op, d, sigma_map, regularization=form, lam=lam, mask=use)
        assert res.n_data == use.sum() and res.n_unknowns == res.reached.sum()
        assert res.log_evidence == pytest.approx(_dense_log_evidence(op, d, sigma_map, use, lam, form), rel=1e-9)
        # and the solution is the dense normal-equation solution
        M = op.matrix.toarray()[use.ravel()][:, res.reached.ravel()]
        W = np.diag(1 / sigma_map.ravel()[use.ravel()] ** 2)
        H = regularization_matrix(form, SRC.n).toarray()[np.ix_(res.reached.ravel(), res.reached.ravel())]
        ref = np.linalg.solve(M.T @ W @ M + lam * H, M.T @ W @ d.ravel()[use.ravel()])
        np.testing.assert_allclose(res.source.ravel()[res.reached.ravel()], ref, rtol=1e-8, atol=1e-10)
        chi2 = np.sum(((M @ ref - d.ravel()[use.ravel()]) / sigma_map.ravel()[use.ravel()]) ** 2)
        assert res.chi2 == pytest.approx(chi2, rel=1e-9)
        assert not res.source.ravel()[~res.reached.ravel()].any()


@pytest.mark.parametrize("form", ["gradient", "curvature", "zeroth"])
def test_chosen_lam_maximises_the_evidence(rng, form):
    op, s, d = _problem(rng)
    best = invert(op, d, 0.02, regularization=form)
    assert 2 <= best.evaluations <= 8  # Newton's method on the derivative: a few factorisations
    # within lam_tol (0.04 dex) of the maximum, so points 2 lam_tol away are further from it and lower
    for factor in (10**-0.08, 10**0.08, 10**-0.1, 10**0.1, 0.1, 10.0):
        other = invert(op, d, 0.02, regularization=form, lam=best.lam * factor)
        assert other.log_evidence < best.log_evidence
    lams, evs = np.array(best.evidence_curve).T
    assert best.log_evidence == pytest.approx(evs.max())
    assert best.reduced_chi2 == pytest.approx(1.0, abs=0.2)
    rmse = np.sqrt(np.mean((best.source - s) ** 2))
    assert rmse < 0.1


def test_backends_agree(rng, caplog):
    op, s, d = _problem(rng)
    backends = ("dense", "splu") + (("cholmod",) if baselines.have_cholmod() else ())
    results = {b: invert(op, d, 0.02, backend=b, lam=7.0) for b in backends}
    ref = results["dense"]
    for b, r in results.items():
        assert r.backend == b
        assert r.log_evidence == pytest.approx(ref.log_evidence, rel=1e-9)
        np.testing.assert_allclose(r.source, ref.source, rtol=1e-7, atol=1e-9)
    # the evidence search (single-precision first steps on the dense backend only) finds the same maximum
    found = {b: invert(op, d, 0.02, backend=b) for b in backends}
    for b, r in found.items():
        assert abs(math.log10(r.lam / found["splu"].lam)) < 2 * 0.04
        assert r.single_precision_evaluations == 0 or b == "dense"
    # without scikit-sparse the sparse path falls back to SciPy with a logged warning
    real, solvers._cholmod, solvers._warned[0] = solvers._cholmod, None, False
    try:
        with caplog.at_level(logging.WARNING, logger="baselines.solvers"):
            assert solvers.choose_backend("auto", 5000, 10) in ("dense", "splu")
        assert "scikit-sparse" in caplog.text
        with pytest.raises(ValueError, match="scikit-sparse"):
            solvers.choose_backend("cholmod", 10, 10)
    finally:
        solvers._cholmod = real


@pytest.mark.skipif(not baselines.have_cholmod(), reason="scikit-sparse not installed")
def test_cholmod_reuses_its_symbolic_analysis(rng):
    op, _, d = _problem(rng, psf=False)
    P = (op.matrix.T @ op.matrix).tocsr()
    H = regularization_matrix("gradient", SRC.n)
    f = solvers.Factorization(P, H, backend="cholmod")
    sym = f._symbolic
    dense = solvers.Factorization(P, H, backend="dense")
    for lam in (0.1, 1.0, 10.0):
        assert f.factor(lam).logdet() == pytest.approx(dense.factor(lam).logdet(), rel=1e-10)
        assert f._symbolic is sym


def test_posterior_std_and_nonnegative(rng):
    op, s, d = _problem(rng)
    res = invert(op, d, 0.02, lam=5.0, return_std=True)
    M = op.matrix.toarray()[:, res.reached.ravel()] / 0.02
    H = regularization_matrix("gradient", SRC.n).toarray()[np.ix_(res.reached.ravel(), res.reached.ravel())]
    var = np.diag(np.linalg.inv(M.T @ M + 5.0 * H))
    np.testing.assert_allclose(res.source_std.ravel()[res.reached.ravel()], np.sqrt(var), rtol=1e-8)
    assert np.isnan(res.source_std.ravel()[~res.reached.ravel()]).all()
    nn = invert(op, d, 0.02, lam=5.0, nonnegative=True)
    assert nn.source.min() >= 0
    A = M.T @ M + 5.0 * H
    b = M.T @ (d.ravel() / 0.02)
    q = lambda v: 0.5 * v @ A @ v - b @ v  # noqa: E731
    clipped = np.clip(res.source.ravel()[res.reached.ravel()], 0, None)
    assert q(nn.source.ravel()[nn.reached.ravel()]) <= q(clipped) + 1e-9


def test_not_positive_definite_raises_clearly():
    P = -sp.identity(20, format="csr")
    H = sp.identity(20, format="csr")
    for backend in ("dense", "splu") + (("cholmod",) if baselines.have_cholmod() else ()):
        f = solvers.Factorization(P, H, backend=backend)
        with pytest.raises(baselines.NotPositiveDefiniteError, match="not positive definite"):
            f.factor(0.5)


def test_invalid_input(rng):
    op, _, d = _problem(rng)
    bad = d.copy()
    bad[3, 4] = np.nan
    cases = [
        (dict(image=bad, sigma=0.02), "NaN"),
        (dict(image=d, sigma=np.inf), "sigma"),
        (dict(image=d, sigma=0.0), "sigma"),
        (dict(image=d, sigma=-1.0), "sigma"),
        (dict(image=d, sigma=np.where(rng.uniform(size=IMG.shape) > 0.5, 0.02, 0.0)), "sigma"),
        (dict(image=d, sigma=np.full((5, 5), 0.02)), "sigma map"),
        (dict(image=d[:-1], sigma=0.02), "image must have shape"),
        (dict(image=d, sigma=0.02, mask=np.zeros(IMG.shape, bool)), "no image pixels"),
        (dict(image=d, sigma=0.02, mask=np.ones(IMG.shape)), "boolean"),
        (dict(image=d, sigma=0.02, regularization="tv"), "regularization"),
        (dict(image=d, sigma=0.02, lam=0.0), "lam"),
        (dict(image=d, sigma=0.02, lam=np.nan), "lam"),
        (dict(image=d, sigma=0.02, backend="magic"), "backend"),
        (dict(image=d, sigma=0.02, lam_tol=0.0), "lam_tol"),
        (dict(image=d, sigma=0.02, lam_tol=np.nan), "lam_tol"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            invert(op, **kwargs)
    # a zero-noise pixel outside the mask is fine
    sig = np.full(IMG.shape, 0.02)
    sig[0, 0] = 0.0
    mask = np.ones(IMG.shape, bool)
    mask[0, 0] = False
    assert np.isfinite(invert(op, d, sig, mask=mask, lam=1.0).log_evidence)
    with pytest.raises(ValueError, match="observation operator"):
        invert(op.matrix, d, 0.02)


def test_arc_mask(rng):
    op, s, d = _problem(rng, sigma=0.01)
    clean = op.apply(s)
    m = baselines.arc_mask(d, 0.01, grow=0)
    assert m.dtype == bool and m.shape == IMG.shape
    assert m[clean > 0.2 * clean.max()].all()  # the arcs are kept
    assert m[clean < 1e-3 * clean.max()].mean() < 0.05  # empty sky is not
    grown = baselines.arc_mask(d, 0.01, grow=2)
    assert grown[m].all() and grown.sum() > m.sum()
    noise_only = rng.normal(0, 0.01, IMG.shape)
    assert baselines.arc_mask(noise_only, 0.01).mean() < 0.05
    with pytest.raises(ValueError, match="sigma"):
        baselines.arc_mask(d, 0.0)


def test_psf_normal_matrix_equals_dense_product(rng):
    """L^T (F^T W F) L (the fast kernel) against M^T W M formed densely, with a mask, a noise map
    (non-uniform weights take the exact path, uniform ones the autocorrelation) and a subset of unknowns."""
    from lensinv._normal_kernels import psf_normal_matrix

    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.12, IMG.pixel_scale), supersample=2)
    w = np.full(IMG.size, 4.0)
    w[rng.uniform(size=IMG.size) < 0.1] = 0.0  # masked pixels
    w[: IMG.size // 3] *= rng.uniform(0.5, 2.0, IMG.size // 3)  # a noise map on part of the image
    M = op.matrix.toarray()
    reached = np.flatnonzero(np.abs(M).sum(axis=0) > 0)[::2]  # any increasing subset
    unknown = np.full(SRC.size, -1, dtype=np.int64)
    unknown[reached] = np.arange(reached.size)
    L, Lc = op.L, op.L.tocsc()
    P = psf_normal_matrix(IMG.n, op.psf, w, L.indptr, L.indices, L.data, Lc.indptr, Lc.indices, Lc.data, SRC.n,
                          unknown, reached.size)
    ref = (M.T * w) @ M
    ref = ref[np.ix_(reached, reached)]
    np.testing.assert_allclose(np.triu(P), np.triu(ref), rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert not np.tril(P, -1).any()


def _dense_pair(rng, n=12):
    op, _, d = _problem(rng)
    M = op.matrix.toarray()
    P = M.T @ M / 0.02**2
    H = regularization_matrix("curvature", SRC.n)
    return P, H


def test_dense_factorization_single_precision_and_reuse(rng):
    P, H = _dense_pair(rng)
    A = lambda lam: P + lam * H.toarray()  # noqa: E731
    f = solvers.Factorization(np.triu(P), H, backend="dense")
    b = rng.normal(size=P.shape[0])
    # alternate precisions and strengths: each factorisation must start from the untouched P
    for lam, single in ((3.0, False), (30.0, True), (0.3, False), (3.0, True), (3.0, False)):
        f.factor(lam, single=single)
        assert f.single == single
        sign, ref = np.linalg.slogdet(A(lam))
        assert sign > 0
        assert f.logdet() == pytest.approx(ref, rel=1e-12 if not single else 1e-5)
        np.testing.assert_allclose(f.solve(b), np.linalg.solve(A(lam), b), rtol=1e-9)  # refined in single
        inv = np.linalg.inv(A(lam))
        t1, t2 = f.trace_terms(None)
        ih = inv @ H.toarray()
        assert t1 == pytest.approx(np.trace(ih), rel=1e-6)
        assert t2 == pytest.approx(np.trace(ih @ ih), rel=1e-6)
        assert f.inverse_quadratic(b) == pytest.approx(b @ inv @ b, rel=1e-5)
        np.testing.assert_allclose(f.full_matrix(), A(lam), rtol=1e-14, atol=1e-12)
    # Hutchinson estimates of the same traces: unbiased, close with many probes
    z = np.random.default_rng(1).choice([-1.0, 1.0], size=(P.shape[0], 4000))
    t1_est, t2_est = f.trace_terms(z)
    assert t1_est == pytest.approx(t1, rel=0.03)
    assert t2_est == pytest.approx(t2, rel=0.05)


def test_search_with_hutchinson_traces_finds_the_same_maximum(rng, monkeypatch):
    from baselines import evidence as inversion

    op, _, d = _problem(rng)
    exact = invert(op, d, 0.02, regularization="curvature")
    monkeypatch.setattr(inversion, "_EXACT_TRACE_MAX", 0)  # estimate the traces, as for large problems
    est = invert(op, d, 0.02, regularization="curvature")
    assert abs(math.log10(est.lam / exact.lam)) < 2 * 0.04
    assert est.single_precision_evaluations < est.evaluations  # the reported evaluation is double precision
    # the maximum: the evidence is lower two tolerances away on either side
    for factor in (10**-0.08, 10**0.08):
        assert invert(op, d, 0.02, regularization="curvature", lam=est.lam * factor).log_evidence < est.log_evidence


def test_newton_terms_equal_the_separate_solves(rng):
    """s, tr(A^-1 H), tr((A^-1 H)^2) and (Hs)^T A^-1 (Hs) from three triangular solves equal the
    separate computations, in both precisions: the Hutchinson estimates against X = G^-1 S H S G^-T
    formed densely from the factor G of the scaled matrix S A S."""
    P, H = _dense_pair(rng)
    f = solvers.Factorization(np.triu(P), H, backend="dense")
    b = rng.normal(size=P.shape[0])
    z = np.random.default_rng(3).choice([-1.0, 1.0], size=(P.shape[0], 16))
    for single in (False, True):
        f.factor(3.0, single=single)
        s, t1, t2, u2 = f.newton_terms(b, z)
        ref_s = np.linalg.solve(P + 3.0 * H.toarray(), b)
        np.testing.assert_allclose(s, ref_s, rtol=1e-9 if not single else 1e-3, atol=1e-12)
        G = np.tril(f._f).astype(np.float64) if single else np.triu(f._f).T
        scale = f._single[1] if single else np.ones(P.shape[0])
        X = np.linalg.solve(G, np.linalg.solve(G, scale[:, None] * H.toarray() * scale[None, :]).T)
        xz = X @ z
        r1, r2 = float(np.sum(z * xz)) / z.shape[1], float(np.sum(xz**2)) / z.shape[1]
        assert f.trace_terms(z) == (t1, t2)
        assert (t1, t2) == (pytest.approx(r1, rel=1e-10 if not single else 1e-4),
                            pytest.approx(r2, rel=1e-10 if not single else 1e-4))
        assert u2 == pytest.approx(f.inverse_quadratic(H @ ref_s), rel=1e-8 if not single else 1e-3)


def test_coarsened_normal_matrix(rng):
    """U^T P U of a 2x2-binned source from the upper triangle of P, for a subset of unknowns on an
    odd grid (edge blocks of one or two pixels)."""
    from baselines._kernels import coarsen_upper

    n_src = 7
    idx = np.sort(rng.choice(n_src * n_src, size=40, replace=False))
    X = rng.normal(size=(idx.size, idx.size))
    P = X @ X.T
    r, c = np.divmod(idx, n_src)
    blocks, group = np.unique((r // 2) * 4 + c // 2, return_inverse=True)
    U = np.zeros((idx.size, blocks.size))
    U[np.arange(idx.size), group] = 1.0
    members = np.argsort(group, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(group))))
    Pc = coarsen_upper(np.triu(P), starts, members, group, blocks.size)
    np.testing.assert_allclose(Pc, U.T @ P @ U, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["dense", "splu"] + (["cholmod"] if baselines.have_cholmod() else []))
def test_search_from_the_binned_source_finds_the_maximum(rng, monkeypatch, backend):
    """The start from the 2x2-binned source's optimum (used above 1,500 unknowns; P dense or
    sparse) leads to the same maximum, and the evidence there is within the gain tolerance of a
    fine scan around it."""
    from baselines import evidence as inversion

    op, _, d = _problem(rng)
    plain = invert(op, d, 0.02, regularization="gradient", backend=backend)
    monkeypatch.setattr(inversion, "_COARSE_FROM", 0)
    monkeypatch.setattr(inversion, "_EXACT_TRACE_MAX", 0)
    calls = []
    real = inversion._Binned.of
    monkeypatch.setattr(inversion._Binned, "of", classmethod(lambda cls, *a: calls.append(1) or real(*a)))
    best = invert(op, d, 0.02, regularization="gradient", backend=backend)
    assert calls == [1] and best.backend == backend
    assert abs(math.log10(best.lam / plain.lam)) < 2 * 0.04
    assert best.single_precision_evaluations < best.evaluations
    assert best.single_precision_evaluations == 0 or backend == "dense"
    scan = [invert(op, d, 0.02, regularization="gradient", lam=best.lam * 10**e, backend=backend).log_evidence
            for e in np.linspace(-0.1, 0.1, 21)]
    assert best.log_evidence >= max(scan) - inversion._GAIN_TOL
    assert scan[0] < best.log_evidence and scan[-1] < best.log_evidence


def test_failed_binned_start_falls_back_to_the_balance_guess(rng, monkeypatch):
    from baselines import evidence as inversion

    op, _, d = _problem(rng)
    plain = invert(op, d, 0.02, regularization="curvature")

    def fail(*args):
        raise solvers.NotPositiveDefiniteError("not positive definite (test)")

    monkeypatch.setattr(inversion, "_COARSE_FROM", 0)
    monkeypatch.setattr(inversion._Binned, "of", classmethod(fail))
    res = invert(op, d, 0.02, regularization="curvature")
    assert res.lam == pytest.approx(plain.lam) and res.log_evidence == pytest.approx(plain.log_evidence)


def _large_problem():
    """1,600 unknowns (above the binning threshold; dense backend), a two-blob source, sigma 0.02."""
    img, src = ImageGrid(72, 0.05), SourceGrid(40, 0.9)
    op = lensinv.operator(LENS, img, src, psf=lensinv.gaussian_psf(0.1, img.pixel_scale), supersample=2)
    x, y = src.coordinates()
    s = np.exp(-0.5 * ((x - 0.03) ** 2 + (y + 0.02) ** 2) / 0.12**2) + 0.5 * np.exp(
        -0.5 * ((x + 0.1) ** 2 + (y - 0.1) ** 2) / 0.05**2)
    return op, s, op.apply(s) + np.random.default_rng(0).normal(0, 0.02, img.shape)


def test_search_close_to_the_maximum_does_not_trust_single_precision_values(monkeypatch):
    """Close to the maximum the search takes one double-precision point with its derivatives: its
    result does not depend on the single-precision values, which are rounded (here perturbed by
    +-0.3 nats; a parabola through one and a double-precision value moved the search before)."""
    import dataclasses

    import baselines.evidence as ev

    op, s, d = _large_problem()
    plain = invert(op, d, 0.02, prior_mean=0.9 * s)
    assert plain.single_precision_evaluations == 1 and plain.evaluations == 2
    jitter = np.random.default_rng(3)
    call = ev._Evidence.__call__

    def rounded(self, x, single, derivatives=True):
        p = call(self, x, single, derivatives)
        if not single:
            return p
        self.curve[-1] = dataclasses.replace(self.curve[-1], log_evidence=self.curve[-1].log_evidence
                                             + jitter.choice([-0.3, 0.3]))
        return dataclasses.replace(p, log_evidence=self.curve[-1].log_evidence)

    monkeypatch.setattr(ev._Evidence, "__call__", rounded)
    for _ in range(4):
        got = invert(op, d, 0.02, prior_mean=0.9 * s)
        assert got.evaluations == 2 and got.lam == plain.lam and got.log_evidence == plain.log_evidence


def test_binned_form_selection_follows_the_full_evidence(monkeypatch):
    """``invert_by_evidence(select="binned")`` compares the forms by the 2x2-binned source's evidence
    (1,600 unknowns: above the binning threshold) and solves with the winner alone: the same result
    as solving with both; the binned evidences' difference follows the full one's."""
    from baselines import inversion
    from baselines.evidence import binned_evidence
    from baselines.normal_equations import normal_equations
    from baselines.regularization import get_regularization

    op, s, d = _large_problem()
    solved = []
    real = inversion._solve
    monkeypatch.setattr(inversion, "_solve", lambda neq, form, *a, **k: solved.append(form.name) or real(neq, form, *a, **k))
    for prior_mean in (None, 0.9 * s):
        neq = normal_equations(op, d, 0.02, prior_mean=prior_mean)
        assert neq.n == 1600
        binned = binned_evidence(neq, [get_regularization(f) for f in ("gradient", "curvature")])
        solved.clear()
        full = baselines.invert_by_evidence(op, d, 0.02, prior_mean=prior_mean)
        assert solved == ["gradient", "curvature"]
        each = {f: invert(op, d, 0.02, regularization=f, prior_mean=prior_mean).log_evidence
                for f in ("gradient", "curvature")}
        diff = each["curvature"] - each["gradient"]
        assert abs(binned[1].log_evidence - binned[0].log_evidence - diff) < 0.25 * abs(diff)
        solved.clear()
        got = baselines.invert_by_evidence(op, d, 0.02, prior_mean=prior_mean, select="binned")
        assert solved == [full.regularization]  # the winner alone
        assert got.regularization == full.regularization and got.lam == pytest.approx(full.lam, rel=1e-12)
        np.testing.assert_allclose(got.source, full.source, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="select"):
        baselines.invert_by_evidence(op, d, 0.02, select="coarse")


def test_binned_selection_of_a_small_problem_solves_every_form(rng, monkeypatch):
    """Up to 1,500 unknowns (where nothing is binned) ``select="binned"`` compares the forms in full."""
    from baselines import inversion

    op, _, d = _problem(rng)
    solved = []
    real = inversion._solve
    monkeypatch.setattr(inversion, "_solve", lambda neq, form, *a, **k: solved.append(form.name) or real(neq, form, *a, **k))
    got = baselines.invert_by_evidence(op, d, 0.02, select="binned")
    assert solved == ["gradient", "curvature"]
    assert got.log_evidence == max(invert(op, d, 0.02, regularization=f).log_evidence for f in ("gradient", "curvature"))
