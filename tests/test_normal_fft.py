"""The FFT and gemm routes of the imaging normal matrix (lensinv.normal.fft_psf_normal_matrix,
gemm_psf_normal_matrix) against a dense product formed independently (each column of L blurred by
scipy.signal.convolve2d), and the choice between the direct, FFT and gemm routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import convolve2d

import lensinv
from lensinv.normal import _route_costs, fft_psf_normal_matrix, gemm_psf_normal_matrix, lens_psf_normal_matrix

LENS = lensinv.Lens(lensinv.SIE(0.5, 0.75, 0.4, center=(0.02, -0.03)), lensinv.ExternalShear(0.04, 1.0))
IMG = lensinv.ImageGrid(30, 0.05)
SRC = lensinv.SourceGrid(9, 0.7)


def _kernel(rng, side):
    """A lopsided (not symmetric) kernel: a flipped or transposed kernel would not pass."""
    ax = np.arange(side) - side // 2
    k = np.exp(-0.5 * ((ax[None, :] - 1.3) ** 2 / 4.0 + ax[:, None] ** 2 / 9.0)) + 0.05 * rng.uniform(size=(side, side))
    return k / k.sum()


def _dense_reference(op, kernel, w):
    """``M^T W M`` with ``M``'s columns the columns of L, as images, convolved by convolve2d ('same')."""
    n = op.image_grid.n
    Ld = op.L.toarray()
    M = np.stack([convolve2d(Ld[:, j].reshape(n, n), kernel, mode="same").reshape(-1) for j in range(Ld.shape[1])],
                 axis=1)
    return M.T @ (w[:, None] * M)


@pytest.mark.parametrize("side", [7, 31, 61])  # 61: wider than the 30-pixel image
def test_fft_route_equals_dense_product(rng, side):
    k = _kernel(rng, side)
    op = lensinv.operator(LENS, IMG, SRC, psf=k, supersample=2)
    w = rng.uniform(0.5, 2.0, IMG.size)  # a noise map: weights vary pixel to pixel
    w[rng.uniform(size=IMG.size) < 0.1] = 0.0  # masked pixels
    ref = _dense_reference(op, op.psf, w)
    idx = np.flatnonzero(np.diag(ref) > 0)[::2]  # an increasing subset of unknowns
    P = fft_psf_normal_matrix(op.L, op.psf, IMG.n, w, idx, chunk=5)
    r = ref[np.ix_(idx, idx)]
    np.testing.assert_allclose(np.triu(P), np.triu(r), rtol=1e-9, atol=1e-13 * np.abs(r).max())
    assert not np.tril(P, -1).any()
    whole = fft_psf_normal_matrix(op.L, op.psf, IMG.n, w)
    np.testing.assert_allclose(np.triu(whole), np.triu(ref), rtol=1e-9, atol=1e-13 * np.abs(ref).max())


@pytest.mark.parametrize("side, masked", [(7, True), (31, False), (61, True)])
def test_gemm_route_equals_dense_product(rng, side, masked):
    """Masked pixels (weight 0) are left out of G (the product is per pixel), or all are kept."""
    k = _kernel(rng, side)
    op = lensinv.operator(LENS, IMG, SRC, psf=k, supersample=2)
    w = rng.uniform(0.5, 2.0, IMG.size)
    if masked:
        w[rng.uniform(size=IMG.size) < 0.2] = 0.0
    ref = _dense_reference(op, op.psf, w)
    idx = np.flatnonzero(np.diag(ref) > 0)[1::2]
    P = gemm_psf_normal_matrix(op.L, op.psf, IMG.n, w, idx)
    r = ref[np.ix_(idx, idx)]
    assert P.flags.c_contiguous and not np.tril(P, -1).any()
    np.testing.assert_allclose(np.triu(P), np.triu(r), rtol=1e-9, atol=1e-13 * np.abs(r).max())
    whole = gemm_psf_normal_matrix(op.L, op.psf, IMG.n, w)
    np.testing.assert_allclose(whole, np.triu(ref), rtol=1e-9, atol=1e-13 * np.abs(ref).max())
    assert gemm_psf_normal_matrix(op.L, op.psf, IMG.n, np.zeros(IMG.size), idx).shape == (idx.size, idx.size)
    assert not gemm_psf_normal_matrix(op.L, op.psf, IMG.n, np.zeros(IMG.size), idx).any()


def test_fft_and_direct_routes_agree_and_unreached_columns_are_exact_zeros(rng):
    k = _kernel(rng, 9)
    op = lensinv.operator(LENS, IMG, lensinv.SourceGrid(9, 1.4), psf=k, supersample=2)
    w = np.zeros((IMG.n, IMG.n))
    w[:12, :12] = 3.0  # one corner used: columns seen elsewhere only must be exactly zero
    w = w.reshape(-1)
    direct = lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="direct")
    fft = lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="fft")
    np.testing.assert_allclose(fft, direct, rtol=1e-9, atol=1e-13 * np.abs(direct).max())
    gemm = lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="gemm")
    np.testing.assert_allclose(gemm, direct, rtol=1e-9, atol=1e-13 * np.abs(direct).max())
    zero = np.diag(direct) == 0
    assert zero.any() and (~zero).any()
    assert not fft[zero].any() and not fft[:, zero].any()  # exact, as the direct route's
    assert not gemm[zero].any() and not gemm[:, zero].any()
    assert np.all(np.diag(fft)[~zero] > 0)


def test_operator_normal_matrix_with_a_big_psf_avoids_the_direct_route(rng, monkeypatch):
    """A 61x61 kernel and a noise map: the direct route would cost K^4 per pixel; auto takes another
    (the direct one is made to fail here) and equals the dense product."""
    import lensinv.normal as normal

    k = _kernel(rng, 61)
    op = lensinv.operator(LENS, IMG, SRC, psf=k, supersample=2)
    w = rng.uniform(0.5, 2.0, IMG.size)
    direct, fft, gemm = _route_costs(op.L, 61, IMG.n, w, SRC.size)
    assert max(fft, gemm) < direct / 10

    def refuse(*args, **kwargs):
        raise AssertionError("the direct route was taken")

    monkeypatch.setattr(normal._normal_kernels, "psf_normal_matrix", refuse)
    P = op.normal_matrix(w)
    ref = _dense_reference(op, op.psf, w)
    np.testing.assert_allclose(np.triu(P), np.triu(ref), rtol=1e-9, atol=1e-13 * np.abs(ref).max())


def test_small_kernel_with_uniform_weights_keeps_the_direct_route(rng):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.08, IMG.pixel_scale), supersample=2)
    direct, fft, gemm = _route_costs(op.L, op.psf.shape[0], IMG.n, np.ones(IMG.size), SRC.size)
    assert direct < min(fft, gemm)


def test_hst_sized_problem_takes_the_gemm_route(monkeypatch):
    """101 x 101 pixels, a 61 x 61 PSF, a noise map, 24 x 24 source pixels (an HST cut-out's lens fit): auto
    takes the gemm route (measured 0.22 s against the FFT route's 0.41 s and the direct one's 99 s)."""
    import lensinv.normal as normal

    rng = np.random.default_rng(5)
    ax = np.arange(61) - 30
    k = np.exp(-0.5 * (ax[None, :] ** 2 + ax[:, None] ** 2) / 1.5**2) + 1e-4
    op = lensinv.operator(lensinv.Lens(lensinv.SIE(1.5, 0.8, 0.3)), lensinv.ImageGrid(101, 0.05),
                          lensinv.SourceGrid(24, 1.6), psf=k / k.sum(), supersample=2)
    w = rng.uniform(0.5, 2.0, 101 * 101)
    taken = []
    monkeypatch.setattr(normal, "gemm_psf_normal_matrix",
                        lambda *a, **kw: taken.append("gemm") or np.zeros((a[4].size,) * 2))
    op.normal_matrix(w)
    assert taken == ["gemm"]


def test_gemm_route_is_not_taken_beyond_its_memory_bound(monkeypatch):
    import lensinv.normal as normal

    op = lensinv.operator(LENS, IMG, SRC, psf=np.ones((61, 61)) / 61**2, supersample=2)
    w = np.ones(IMG.size)
    assert math.isfinite(_route_costs(op.L, 61, IMG.n, w, SRC.size)[2])
    monkeypatch.setattr(normal, "_GEMM_MAX_BYTES", 8 * IMG.size * SRC.size - 1)
    assert _route_costs(op.L, 61, IMG.n, w, SRC.size)[2] == math.inf


def test_invalid_arguments_are_named(rng):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.08, IMG.pixel_scale))
    w = np.ones(IMG.size)
    with pytest.raises(ValueError, match="method"):
        lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="fast")
    with pytest.raises(ValueError, match="psf"):
        fft_psf_normal_matrix(op.L, np.ones((4, 4)) / 16, IMG.n, w)
    with pytest.raises(ValueError, match="chunk"):
        fft_psf_normal_matrix(op.L, op.psf, IMG.n, w, chunk=0)
    with pytest.raises(ValueError, match="weights"):
        fft_psf_normal_matrix(op.L, op.psf, IMG.n, -w)
    with pytest.raises(ValueError, match="image_n"):
        fft_psf_normal_matrix(op.L, op.psf, IMG.n + 1, np.ones((IMG.n + 1) ** 2))
    with pytest.raises(ValueError, match="psf"):
        gemm_psf_normal_matrix(op.L, np.ones((4, 4)) / 16, IMG.n, w)
    with pytest.raises(ValueError, match="weights"):
        gemm_psf_normal_matrix(op.L, op.psf, IMG.n, -w)
    with pytest.raises(ValueError, match="image_n"):
        gemm_psf_normal_matrix(op.L, op.psf, IMG.n + 1, np.ones((IMG.n + 1) ** 2))
