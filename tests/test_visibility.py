"""The visibility operator (finufft): adjoint, direct DFT, Hermitian symmetry, units, the normal
matrix from the dirty beam, and the uv-plane Warren-Dye inversion against a dense solve."""

import math

import numpy as np
import pytest

pytest.importorskip("finufft")

import baselines  # noqa: E402
import lensinv  # noqa: E402
from baselines.regularization import regularization_matrix  # noqa: E402
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid  # noqa: E402
from lensinv.testing import dot_test  # noqa: E402
from lensinv.visibility import ARCSEC, UVCoverage  # noqa: E402

LENS = Lens(SIE(0.6, 0.8, 0.5), ExternalShear(0.03, 0.4))
SRC = SourceGrid(10, 0.9)


def _uv(rng, n_vis, umax=1.5e6):
    return rng.uniform(-umax, umax, (n_vis, 2))


def _dft_matrix(op):
    """Independent: the dense complex M = A diag(pb) L by the DFT formula of DESIGN.md."""
    x, y = op.image_grid.coordinates()
    x, y = x.ravel() * ARCSEC, y.ravel() * ARCSEC
    u, v = op.uv[:, :1], op.uv[:, 1:]
    A = np.exp(-2j * np.pi * (u * x + v * y))
    pb = np.ones(op.image_grid.size) if op.primary_beam is None else op.primary_beam
    return A @ (pb[:, None] * op.L.toarray())


@pytest.fixture(params=[24, 25], ids=["even", "odd"])
def small(request, rng):
    img = ImageGrid(request.param, 0.06)
    pb = np.exp(-0.5 * sum(c**2 for c in img.coordinates()) / 0.6**2)
    return lensinv.visibility_operator(LENS, _uv(rng, 300), img, SRC, supersample=2, primary_beam=pb)


def test_dot_test(small):
    assert dot_test(small, rtol=1e-10).passed
    op = lensinv.visibility_operator(LENS, small.coverage, small.image_grid, SRC, supersample=2)  # no beam
    assert dot_test(op, rtol=1e-10).passed


def test_matches_the_direct_dft(small, rng):
    M = _dft_matrix(small)
    for _ in range(2):
        s = rng.normal(size=SRC.size)
        ref = M @ s
        got = small.apply(s.reshape(SRC.shape))
        assert got.dtype == np.complex128 and got.shape == (300,)
        assert np.linalg.norm(got - ref) <= 1e-8 * np.linalg.norm(ref)
        d = rng.normal(size=300) + 1j * rng.normal(size=300)
        ref_adj = np.real(M.conj().T @ d)
        assert np.linalg.norm(small.adjoint(d) - ref_adj) <= 1e-8 * np.linalg.norm(ref_adj)


def test_hermitian_symmetry(rng):
    uv = _uv(rng, 50)
    op = lensinv.visibility_operator(LENS, np.concatenate([uv, -uv]), ImageGrid(24, 0.06), SRC, supersample=2)
    V = op.apply(rng.uniform(size=SRC.size))
    np.testing.assert_allclose(V[50:], np.conj(V[:50]), rtol=0, atol=1e-10 * np.abs(V).max())


def test_units_point_source_at_the_phase_centre(rng):
    """S Jy/pixel in one pixel at the phase centre (odd grid: a pixel centre at 0) gives V = S."""
    img = ImageGrid(25, 0.05)
    op = lensinv.visibility_operator(LENS, _uv(rng, 200, 3e6), img, SRC, supersample=1)
    image = np.zeros(img.shape)
    image[12, 12] = 2.5  # Jy in that pixel
    np.testing.assert_allclose(op.fourier(image), 2.5, rtol=0, atol=1e-11)
    # off centre by one pixel: a pure phase exp(-2 pi i u delta)
    image = np.zeros(img.shape)
    image[12, 13] = 1.0
    np.testing.assert_allclose(op.fourier(image), np.exp(-2j * np.pi * op.uv[:, 0] * img.delta * ARCSEC),
                               rtol=0, atol=1e-11)
    # the dirty image of a point source peaks at S there
    V = op.fourier(np.where(np.arange(img.size).reshape(img.shape) == 12 * 25 + 12, 2.5, 0.0))
    assert op.dirty_image(V)[12, 12] == pytest.approx(2.5, rel=1e-10)


@pytest.mark.parametrize("restricted", [False, True])
def test_normal_matrix_equals_the_dense_dft_product(small, rng, restricted):
    M = _dft_matrix(small)
    w = rng.uniform(0.5, 2.0, 300)
    w[:20] = 0.0  # visibilities left out
    ref = np.real(M.conj().T @ (w[:, None] * M))
    idx = np.flatnonzero(np.diag(ref) > 0)[::2] if restricted else None
    P = small.normal_matrix(w, unknowns=idx)
    if restricted:
        ref = ref[np.ix_(idx, idx)]
    assert P.shape == ref.shape
    np.testing.assert_allclose(P, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_array_equal(P, P.T)
    sparse = small.normal_matrix(w, unknowns=idx, dense=False)
    np.testing.assert_allclose(sparse.toarray(), P, rtol=0, atol=0)


def test_beam_is_cached_per_weights(rng):
    cov = UVCoverage(_uv(rng, 400))
    img = ImageGrid(24, 0.06)
    w = rng.uniform(1, 2, 400)
    b1 = cov.beam(w, img)
    assert cov.beam(w.copy(), img) is b1  # equal weights: the same array, not recomputed
    b2 = cov.beam(2 * w, img)
    assert b2 is not b1
    np.testing.assert_allclose(b2, 2 * b1, rtol=1e-12, atol=1e-10 * b1.max())
    # the beam at zero separation is the sum of the weights; it is symmetric
    assert b1[23, 23] == pytest.approx(w.sum(), rel=1e-12)
    np.testing.assert_allclose(b1, b1[::-1, ::-1], rtol=0, atol=1e-10 * b1.max())
    # two operators on one coverage share it
    ops = [lensinv.visibility_operator(Lens(SIE(t)), cov, img, SRC, supersample=1) for t in (0.5, 0.6)]
    ops[0].normal_matrix(w)
    ops[1].normal_matrix(w)
    assert len(cov._cache) == 2  # w and 2 w


def _dense_evidence(M, d, sigma, lam, H):
    """Independent: the Gaussian marginal likelihood of the real data (Re V, Im V) and the MAP source."""
    Mr = np.concatenate([M.real, M.imag])
    dr = np.concatenate([d.real, d.imag])
    sig = np.concatenate([sigma, sigma])
    reached = np.abs(Mr).sum(axis=0) > 0
    Mr = Mr[:, reached]
    Hr = H.toarray()[np.ix_(reached, reached)]
    cov = np.diag(sig**2) + Mr @ np.linalg.solve(lam * Hr, Mr.T)
    _, logdet = np.linalg.slogdet(cov)
    logev = -0.5 * dr @ np.linalg.solve(cov, dr) - 0.5 * logdet - 0.5 * dr.size * math.log(2 * math.pi)
    A = Mr.T @ (Mr / sig[:, None] ** 2) + lam * Hr
    s = np.zeros(M.shape[1])
    s[reached] = np.linalg.solve(A, Mr.T @ (dr / sig**2))
    Mfull = np.concatenate([M.real, M.imag])
    chi2 = float(np.sum(((Mfull @ s - dr) / sig) ** 2))
    return logev, s, chi2


def test_invert_on_visibilities_equals_a_dense_solve(rng):
    img = ImageGrid(24, 0.06)
    op = lensinv.visibility_operator(LENS, _uv(rng, 400, 1.2e6), img, SRC, supersample=2)
    x, y = SRC.coordinates()
    s_true = np.exp(-0.5 * ((x - 0.03) ** 2 + (y + 0.02) ** 2) / 0.12**2)
    sigma = rng.uniform(0.5, 1.5, 400)  # per visibility, per real and imaginary part
    d = op.apply(s_true) + sigma * (rng.normal(size=400) + 1j * rng.normal(size=400))
    lam = 2.0
    res = baselines.invert(op, d, sigma, regularization="gradient", lam=lam)
    M = _dft_matrix(op)
    logev, s_ref, chi2 = _dense_evidence(M, d, sigma, lam, regularization_matrix("gradient", SRC.n))
    assert res.n_data == 800
    assert res.log_evidence == pytest.approx(logev, rel=1e-8)
    np.testing.assert_allclose(res.source.ravel(), s_ref, rtol=1e-7, atol=1e-8 * np.abs(s_ref).max())
    assert res.chi2 == pytest.approx(chi2, rel=1e-7)
    # the evidence search converges and beats its neighbours
    best = baselines.invert(op, d, sigma)
    assert best.status == "converged"
    for f in (10**-0.2, 10**0.2):
        assert baselines.invert(op, d, sigma, lam=best.lam * f).log_evidence < best.log_evidence
    # units: visibilities and sigma x c give a source x c
    c = 1e-3
    scaled = baselines.invert(op, d * c, sigma * c, lam=lam / c**2)
    np.testing.assert_allclose(scaled.source, res.source * c, rtol=1e-8, atol=1e-12)


def test_bad_input_is_named(rng):
    img = ImageGrid(24, 0.06)
    for bad, msg in [(np.full((5, 2), np.nan), "uv contains NaN"), (np.zeros((5, 3)), "uv must have shape"),
                     (np.zeros(5), "uv must have shape"), (np.zeros((5, 2), complex), "uv must be a real")]:
        with pytest.raises(ValueError, match=msg):
            lensinv.visibility_operator(LENS, bad, img, SRC)
    with pytest.raises(ValueError, match="primary_beam"):
        lensinv.visibility_operator(LENS, _uv(rng, 5), img, SRC, primary_beam=-np.ones(img.shape))
    with pytest.raises(ValueError, match="eps"):
        lensinv.visibility_operator(LENS, _uv(rng, 5), img, SRC, eps=0.5)
    op = lensinv.visibility_operator(LENS, _uv(rng, 5), img, SRC, supersample=1)
    with pytest.raises(ValueError, match="weights"):
        op.normal_matrix(np.ones(4))
    with pytest.raises(ValueError, match="weights"):
        op.normal_matrix(-np.ones(5))
    with pytest.raises(ValueError, match="vis"):
        op.adjoint(np.ones(4))
    with pytest.raises(ValueError, match="image"):  # complex data, wrong length
        baselines.invert(op, np.ones(4, complex), 1.0)
    assert not hasattr(op, "matrix")
