"""The sparse operators L, F and F L: exactness, adjoints, analytic checks, torch."""

import numpy as np
import pytest
import scipy.signal
import scipy.sparse as sp

import lensinv
import lensinv.testing
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid

from .conftest import dot_test, random_lens, reference_lensing_matrix

SMALL_IMG = ImageGrid(n=48, pixel_scale=0.06)
SMALL_SRC = SourceGrid(n=24, fov=1.2)


def _gaussian_source(grid, x0=0.05, y0=-0.03, width=0.12):
    x, y = grid.coordinates()
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / width**2)


@pytest.mark.parametrize("lens, img, src, ss", [
    (Lens(SIE(1.2, 0.7, 0.3), ExternalShear(0.05, 1.0)), ImageGrid(), SourceGrid(), 4),
    (Lens(SIE(0.3, 0.2, 2.3)), ImageGrid(40, 0.05), SourceGrid(32, 1.0), 7),
    # wide ray spread at the SIS centre: sort-and-merge path
    (Lens(SIE(1.0)), ImageGrid(51, 0.06), SourceGrid(40, 2.5), 8),
    # rows whose entries overflow their reserved span: retraced path
    (Lens(SIE(1.0)), ImageGrid(3, 1.0), SourceGrid(30, 2.5), 16),
    (Lens(SIE(0.8, 0.5, 1.0, center=(0.07, -0.05))), ImageGrid(5, 0.4), SourceGrid(50, 2.0), 12),
    (Lens(ExternalShear(0.1, 0.2)), ImageGrid(9, 0.2), SourceGrid(5, 1.0), 1),
])
def test_L_matches_reference_construction(lens, img, src, ss):
    L = lensinv.lensing_matrix(lens, img, src, ss)
    ref = reference_lensing_matrix(lens, img, src, ss)
    assert L.shape == (img.size, src.size) and L.dtype == np.float64
    assert L.has_canonical_format
    np.testing.assert_array_equal(L.indptr, ref.indptr)
    np.testing.assert_array_equal(L.indices, ref.indices)
    np.testing.assert_allclose(L.data, ref.data, rtol=1e-12, atol=1e-15)


def test_dot_product_tests(rng):
    lens = random_lens(rng)
    psf = rng.uniform(0, 1, size=(5, 5))
    op = lensinv.operator(lens, SMALL_IMG, SMALL_SRC, psf=psf, supersample=3)
    ni, ns = SMALL_IMG.size, SMALL_SRC.size
    assert dot_test(lambda v: op.L @ v, lambda v: op.L.T @ v, ns, ni, rng) < 1e-12
    assert dot_test(lambda v: op.F @ v, lambda v: op.F.T @ v, ni, ni, rng) < 1e-12
    assert lensinv.testing.dot_test(op, rtol=1e-12).passed
    # apply/adjoint are the matrix and its exact transpose
    d = rng.normal(size=ni)
    np.testing.assert_allclose(op.adjoint(d), (op.F @ op.L).T @ d, rtol=1e-12, atol=1e-12)


def test_uniform_source_gives_one_where_all_rays_land_inside(rng):
    lens = random_lens(rng)
    ss = 3
    op = lensinv.operator(lens, SMALL_IMG, SMALL_SRC, supersample=ss)
    img = op.apply(np.ones(SMALL_SRC.size))
    # independent test of which pixels have every sub-pixel ray inside the span of source-pixel centres
    n = SMALL_IMG.n
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * SMALL_IMG.delta
    x, y = SMALL_IMG.coordinates()
    inside = np.ones((n, n), bool)
    for oy in off:
        for ox in off:
            bx, by = lens.raytrace(x + ox, y + oy)
            h = (SMALL_SRC.n - 1) / 2 * SMALL_SRC.delta
            inside &= (np.abs(bx) <= h) & (np.abs(by) <= h)
    assert inside.sum() > 50
    np.testing.assert_allclose(img.reshape(n, n)[inside], 1.0, rtol=1e-13)
    assert img.min() >= 0 and img.max() <= 1 + 1e-13
    assert np.all(img.reshape(n, n)[~inside] < 1 - 1e-9)


def test_supersampling_converges():
    lens = Lens(SIE(0.9, 0.6, 0.4), ExternalShear(0.05, 0.3))
    img, src = ImageGrid(64, 0.05), SourceGrid(48, 1.5)
    s = _gaussian_source(src)
    ref = lensinv.operator(lens, img, src, supersample=32).apply(s)
    rms = [np.sqrt(np.mean((lensinv.operator(lens, img, src, supersample=ss).apply(s) - ref) ** 2))
           for ss in (1, 2, 4, 8)]
    for coarse, fine in zip(rms, rms[1:]):
        assert fine < coarse / 2.5  # second-order convergence of the pixel average
    assert rms[-1] < 1e-4


def test_lensed_image_matches_independent_simulation():
    """lenstronomy ray shooting of the same sub-pixels, with the analytic source evaluated at each ray."""
    from lenstronomy.LensModel.lens_model import LensModel

    lens = Lens(SIE(1.1, 0.7, 0.5), ExternalShear(0.06, 1.3))
    img, ss, width = ImageGrid(96, 0.04), 4, 0.12
    models, kwargs = lens.to_lenstronomy()
    n = img.n
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * img.delta
    x, y = img.coordinates()
    theirs = np.zeros((n, n))
    for oy in off:
        for ox in off:
            bx, by = LensModel(models).ray_shooting((x + ox).ravel(), (y + oy).ravel(), kwargs)
            theirs += np.exp(-0.5 * ((bx - 0.05) ** 2 + (by + 0.03) ** 2) / width**2).reshape(n, n)
    theirs /= ss * ss
    assert theirs.max() > 0.9
    errors = []
    for n_src in (64, 128):
        src = SourceGrid(n_src, 1.5)
        ours = lensinv.operator(lens, img, src, supersample=ss).apply(_gaussian_source(src, 0.05, -0.03, width))
        errors.append(np.abs(ours.reshape(n, n) - theirs).max())
    # bilinear interpolation of the pixelised source errs by <= 2 * delta^2 / 8 * max|f''| = 0.0095 at 64 pixels,
    # and the error falls as delta^2
    assert errors[0] < 0.0095
    assert errors[1] < errors[0] / 3.5


def test_sis_einstein_ring_radius():
    tE = 1.0
    img, src = ImageGrid(128, 0.02), SourceGrid(64, 0.8)
    op = lensinv.operator(Lens(SIE(tE)), img, src, supersample=4)
    ring = op.apply(_gaussian_source(src, 0.0, 0.0, 0.02)).reshape(img.shape)
    x, y = img.coordinates()
    r = np.hypot(x, y)
    assert np.sum(ring * r) / np.sum(ring) == pytest.approx(tE, rel=0.01)
    bins = np.arange(0, 1.3, img.delta)
    prof = np.histogram(r, bins, weights=ring)[0] / np.maximum(np.histogram(r, bins)[0], 1)
    assert abs(bins[np.argmax(prof)] + img.delta / 2 - tE) <= img.delta
    # azimuthally uniform: the ring's brightness does not depend on angle
    on_ring = np.abs(r - tE) < img.delta / 2
    assert ring[on_ring].std() < 0.05 * ring[on_ring].mean()


def test_psf_operator_equals_convolve2d(rng):
    kernel = rng.uniform(0, 1, size=(7, 7))
    kernel[0, :] = 0.0
    kernel[:, 6] *= 5.0  # clearly asymmetric
    kernel /= kernel.sum()
    grid = ImageGrid(33, 0.05)
    F = lensinv.psf_matrix(kernel, grid)
    im = rng.normal(size=grid.shape)
    np.testing.assert_allclose((F @ im.ravel()).reshape(grid.shape),
                               scipy.signal.convolve2d(im, kernel, mode="same"), rtol=1e-12, atol=1e-13)
    # the full operator blurs the lensed image the same way
    op = lensinv.operator(random_lens(rng), grid, SMALL_SRC, psf=kernel, supersample=2)
    s = rng.uniform(size=SMALL_SRC.shape)
    np.testing.assert_allclose(op.apply(s), scipy.signal.convolve2d((op.L @ s.ravel()).reshape(grid.shape),
                                                                    kernel, mode="same"), rtol=1e-11, atol=1e-13)
    assert sp.isspmatrix_csr(op.matrix) and op.matrix.has_canonical_format
    np.testing.assert_allclose(op.psf, kernel)


def test_fft_blur_equals_sparse_matrix(rng):
    """apply/adjoint blur by FFT, the same linear map as the sparse F L, and give the same bits
    before and after .matrix is formed."""
    kernel = rng.uniform(0, 1, size=(9, 9))
    kernel[:, :2] = 0.0
    op = lensinv.operator(random_lens(rng), SMALL_IMG, SMALL_SRC, psf=kernel, supersample=2)
    s, d = rng.uniform(size=SMALL_SRC.size), rng.normal(size=SMALL_IMG.size)
    assert "matrix" not in op.__dict__
    lazy_fwd, lazy_adj = op.apply(s), op.adjoint(d)
    assert lensinv.testing.dot_test(op, rtol=1e-12).passed
    M = op.matrix
    np.testing.assert_allclose(M.toarray(), (op.F @ op.L).toarray(), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(lazy_fwd, M @ s, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(lazy_adj, M.T @ d, rtol=1e-11, atol=1e-13)
    np.testing.assert_array_equal(op.apply(s), lazy_fwd)  # bit-identical once the matrix exists
    np.testing.assert_array_equal(op.adjoint(d), lazy_adj)


def test_psf_is_normalised_by_operator(rng):
    lens = random_lens(rng)
    k = np.ones((3, 3))
    op = lensinv.operator(lens, SMALL_IMG, SMALL_SRC, psf=k * 4.0)
    assert op.psf.sum() == pytest.approx(1.0)
    assert op.F.sum(axis=1).max() == pytest.approx(1.0)


def test_layouts_and_no_psf(rng):
    op = lensinv.operator(random_lens(rng), SMALL_IMG, SMALL_SRC, supersample=2)
    assert op.F is None and op.matrix is op.L and op.shape == (SMALL_IMG.size, SMALL_SRC.size)
    s = rng.uniform(size=SMALL_SRC.shape)
    assert op.apply(s).shape == SMALL_IMG.shape
    assert op.apply(s.ravel()).shape == (SMALL_IMG.size,)
    assert op.adjoint(np.ones(SMALL_IMG.shape)).shape == SMALL_SRC.shape
    np.testing.assert_array_equal(op.apply(s).ravel(), op.apply(s.ravel()))


def test_default_operator_is_the_seeds_setup():
    op = lensinv.operator(Lens(SIE(1.0, 0.8)))
    assert op.shape == (192 * 192, 64 * 64) and op.supersample == lensinv.DEFAULT_SUPERSAMPLE


@pytest.mark.slow
def test_torch_operator_matches_scipy_and_autograd(rng):
    torch = pytest.importorskip("torch")
    op = lensinv.operator(random_lens(rng), SMALL_IMG, SMALL_SRC, psf=lensinv.gaussian_psf(0.1, 0.06), supersample=2)
    top = op.to_torch(dtype=torch.float64)
    assert top.matrix.layout == torch.sparse_csr and top.shape == op.shape
    s = rng.uniform(size=(3, SMALL_SRC.size))
    got = top.apply(torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(got, (op.matrix @ s.T).T, rtol=1e-12, atol=1e-13)
    d = rng.normal(size=SMALL_IMG.shape)
    np.testing.assert_allclose(top.adjoint(torch.from_numpy(d)).numpy(), op.adjoint(d), rtol=1e-12, atol=1e-13)
    # backward of the forward model is the exact transpose product
    x = torch.from_numpy(s[0]).requires_grad_(True)
    w = torch.from_numpy(rng.normal(size=SMALL_IMG.size))
    (top.apply(x) * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), op.adjoint(w.numpy()), rtol=1e-12, atol=1e-13)
    # gradcheck of the chi^2 gradient
    assert torch.autograd.gradcheck(lambda v: top.apply(v), (torch.from_numpy(s[:1]).requires_grad_(True),))
    f32 = op.to_torch()
    assert f32.matrix.dtype == torch.float32
    np.testing.assert_allclose(f32.apply(torch.from_numpy(s[0]).float()).numpy(), op.apply(s[0]), rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="source"):
        top.apply(torch.zeros(5))


@pytest.mark.parametrize("ss", [0, -1, 1.5, True])
def test_invalid_supersample(ss):
    with pytest.raises(ValueError, match="supersample"):
        lensinv.operator(Lens(SIE(1.0)), SMALL_IMG, SMALL_SRC, supersample=ss)


def test_invalid_arrays_and_arguments(rng):
    op = lensinv.operator(random_lens(rng), SMALL_IMG, SMALL_SRC, supersample=1)
    with pytest.raises(ValueError, match="source must have shape"):
        op.apply(np.ones(SMALL_SRC.size + 1))
    with pytest.raises(ValueError, match="source must have shape"):
        op.apply(np.ones((SMALL_SRC.n, SMALL_SRC.n + 1)))
    with pytest.raises(ValueError, match="image must have shape"):
        op.adjoint(np.ones(SMALL_SRC.size))
    bad = np.ones(SMALL_SRC.size)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        op.apply(bad)
    with pytest.raises(ValueError, match="lens"):
        lensinv.operator(SIE(1.0), SMALL_IMG, SMALL_SRC)
    with pytest.raises(ValueError, match="image_grid"):
        lensinv.operator(Lens(SIE(1.0)), SMALL_SRC, SMALL_SRC)
    with pytest.raises(ValueError, match="source_grid"):
        lensinv.operator(Lens(SIE(1.0)), SMALL_IMG, SMALL_IMG)
