"""The FFT route of the imaging normal matrix (lensinv.normal.fft_psf_normal_matrix) against a dense
product formed independently (each column of L blurred by scipy.signal.convolve2d), and the
choice between the direct and the FFT route."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import convolve2d

import lensinv
from lensinv.normal import _route_costs, fft_psf_normal_matrix, lens_psf_normal_matrix

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


def test_fft_and_direct_routes_agree_and_unreached_columns_are_exact_zeros(rng):
    k = _kernel(rng, 9)
    op = lensinv.operator(LENS, IMG, lensinv.SourceGrid(9, 1.4), psf=k, supersample=2)
    w = np.zeros((IMG.n, IMG.n))
    w[:12, :12] = 3.0  # one corner used: columns seen elsewhere only must be exactly zero
    w = w.reshape(-1)
    direct = lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="direct")
    fft = lens_psf_normal_matrix(op.L, op.psf, IMG.n, SRC.n, w, method="fft")
    np.testing.assert_allclose(fft, direct, rtol=1e-9, atol=1e-13 * np.abs(direct).max())
    zero = np.diag(direct) == 0
    assert zero.any() and (~zero).any()
    assert not fft[zero].any() and not fft[:, zero].any()  # exact, as the direct route's
    assert np.all(np.diag(fft)[~zero] > 0)


def test_operator_normal_matrix_with_a_big_psf_takes_the_fft_route(rng, monkeypatch):
    """A 61x61 kernel and a noise map: the direct route would cost K^4 per pixel; auto takes the FFT
    route (the direct one is made to fail here) and equals the dense product."""
    import lensinv.normal as normal

    k = _kernel(rng, 61)
    op = lensinv.operator(LENS, IMG, SRC, psf=k, supersample=2)
    w = rng.uniform(0.5, 2.0, IMG.size)
    direct, fft = _route_costs(op.L, 61, IMG.n, w, SRC.size)
    assert fft < direct / 10

    def refuse(*args, **kwargs):
        raise AssertionError("the direct route was taken")

    monkeypatch.setattr(normal._normal_kernels, "psf_normal_matrix", refuse)
    P = op.normal_matrix(w)
    ref = _dense_reference(op, op.psf, w)
    np.testing.assert_allclose(np.triu(P), np.triu(ref), rtol=1e-9, atol=1e-13 * np.abs(ref).max())


def test_small_kernel_with_uniform_weights_keeps_the_direct_route(rng):
    op = lensinv.operator(LENS, IMG, SRC, psf=lensinv.gaussian_psf(0.08, IMG.pixel_scale), supersample=2)
    direct, fft = _route_costs(op.L, op.psf.shape[0], IMG.n, np.ones(IMG.size), SRC.size)
    assert direct < fft


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
