"""Normal matrices ``Re(M^H W M)`` of observation operators, for linear solvers.

:func:`sparse_normal_matrix` forms it for any explicit real sparse ``M``;
:meth:`lensinv.LensOperator.normal_matrix` has a faster route for ``M = F L``
(``L^T (F^T W F) L``). Both restrict it to a set of source pixels (the unknowns)
and return either a dense array of which only the upper triangle is filled, or a
full symmetric sparse matrix.

Three routes form ``L^T (F^T W F) L`` (:func:`lens_psf_normal_matrix`, ``method="auto"`` picks the
cheapest by an operation count):

- ``"direct"`` (:mod:`lensinv._normal_kernels`): rows of ``F^T W F`` summed exactly, or ``w`` times
  the PSF's autocorrelation where the weights are uniform over a PSF window; its cost grows as
  ``K^4`` per row of non-uniform weights for a ``K x K`` kernel (a 61 x 61 HST PSF with a noise map
  that varies pixel to pixel: 76 s on a 101 x 101 image, 32 x 32 source, one thread);
- ``"fft"`` (:func:`fft_psf_normal_matrix`): ``Q = F^T W F L`` column by column with FFT
  convolutions (the columns of L are scattered into images in chunks), then ``L^T Q``; its cost
  is about ``4 N^2 log N^2`` per source pixel with ``N >= n + (K - 1) / 2`` the FFT side, almost
  independent of the kernel (the same problem: 1.2 s);
- ``"gemm"`` (:func:`gemm_psf_normal_matrix`): ``G = W^1/2 F L`` formed directly (each entry of L
  scatters the kernel; cost ``nnz(L) K^2``) on the weighted pixels only, then ``G^T G`` by BLAS
  ``syrk`` (cost ``n_w m^2`` for ``n_w`` weighted pixels and ``m`` source pixels, at the machine's
  matrix-product speed): fastest where the source has up to about a thousand pixels.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import numpy as np
import scipy.fft as sfft
import scipy.linalg.blas
import scipy.sparse as sp
from scipy import ndimage

from . import _normal_kernels

log = logging.getLogger(__name__)


def _weights(weights: np.ndarray, n_rows: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n_rows,):
        raise ValueError(f"weights must have {n_rows} elements (one per data value), got {w.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w


def sparse_normal_matrix(M: sp.spmatrix, weights: np.ndarray, unknowns: Optional[np.ndarray] = None,
                         dense: bool = True) -> Union[np.ndarray, sp.csr_matrix]:
    """``M^T diag(w) M`` of a real sparse matrix, restricted to the columns ``unknowns``.

    Parameters
    ----------
    M : scipy.sparse matrix
        ``(n_data, n_src)``, real.
    weights : ndarray
        ``(n_data,)`` non-negative weights (``1 / sigma^2``; 0 leaves a row out).
    unknowns : ndarray of int, optional
        Sorted column indices to keep (default: all).
    dense : bool
        True: a C-ordered ``(n, n)`` array holding the upper triangle (``j >= i``; the strict lower
        triangle is zero). False: a symmetric CSR matrix.
    """
    w = _weights(weights, M.shape[0])
    Mr = sp.csr_matrix(M)
    if np.iscomplexobj(Mr.data):
        raise ValueError("sparse_normal_matrix needs a real matrix")
    used = w > 0
    if not used.all():
        Mr, w = Mr[used], w[used]
    Mc = Mr.tocsc()
    if unknowns is not None and unknowns.size < M.shape[1]:
        Mc = Mc[:, unknowns]
        Mr = Mc.tocsr()
    Mr.sort_indices()
    Mc.sort_indices()
    n = Mc.shape[1]
    args = (Mr.indptr, Mr.indices, Mr.data.astype(np.float64, copy=False), Mc.indptr, Mc.indices,
            Mc.data.astype(np.float64, copy=False), w, n)
    if dense:
        return _normal_kernels.normal_matrix_dense(*args)
    ptr, ind, val = _normal_kernels.normal_matrix_csr(*args)
    return sp.csr_matrix((val, ind, ptr), shape=(n, n))


#: ``method`` values of :func:`lens_psf_normal_matrix`
NORMAL_METHODS = ("auto", "direct", "fft", "gemm")
#: seconds per unit of :func:`_route_costs`' operation counts (measured on one core: 101 x 101 images,
#: kernels of 11 to 61 pixels, uniform and non-uniform weights)
_DIRECT_SECONDS_PER_OP = 1.2e-9
_FFT_SECONDS_PER_OP = 5e-9
#: the gemm route: per kernel element scattered (``nnz(L) K^2``), and per ``n_rows m^2`` of the product
_SCATTER_SECONDS_PER_OP = 1.6e-9
_SYRK_SECONDS_PER_OP = 3.5e-11
_GEMM_OVERHEAD_SECONDS = 0.01  # measured 18-40 ms against the direct route's 8-10 ms on a 30 x 30 image, 9 x 9 source
#: ``auto`` takes the gemm route only where G over every pixel (``8 n^2 m`` bytes) fits in this (the
#: copy of its weighted rows may add as much again)
_GEMM_MAX_BYTES = 2 * 1024**3


def _fft_side(n: int, kernel_side: int) -> int:
    """The FFT side for 'same' convolutions of an ``n``-pixel image with no wrap-around into it."""
    return sfft.next_fast_len(max(n + (kernel_side - 1) // 2, kernel_side), real=True)


def _psf_route_inputs(L: sp.csr_matrix, psf: np.ndarray, image_n: int,
                      weights: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The image side, the checked weights and the kernel (an odd square) of a PSF route's call."""
    n = int(image_n)
    if L.shape[0] != n * n:
        raise ValueError(f"L has {L.shape[0]} rows, not image_n^2 = {n * n}")
    w = _weights(weights, L.shape[0])
    k = np.asarray(psf, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise ValueError(f"psf must be an odd square kernel, got shape {k.shape}")
    return n, w, k


def _route_costs(L: sp.csr_matrix, kernel_side: int, image_n: int, w: np.ndarray,
                 n_columns: int) -> tuple[float, float, float]:
    """Estimated seconds of the direct, the FFT and the gemm route (module docstring)."""
    K = kernel_side
    c = (K - 1) // 2
    W = w.reshape(image_n, image_n)
    rows = np.diff(L.indptr) > 0
    # rows of uniform weight over a PSF window inside the image take the autocorrelation
    size = min(K, image_n)
    uniform = ndimage.maximum_filter(W, size=size, mode="constant", cval=-1.0) == \
        ndimage.minimum_filter(W, size=size, mode="constant", cval=-1.0)
    inside = np.zeros((image_n, image_n), dtype=bool)
    if image_n > 2 * c:
        inside[c:image_n - c, c:image_n - c] = True
    n_exact = int(np.count_nonzero(rows & ~(uniform & inside).reshape(-1)))
    direct = _DIRECT_SECONDS_PER_OP * (n_exact * float(K) ** 4 + L.nnz * float(4 * c + 1) ** 2)
    N = _fft_side(image_n, K)
    fft = _FFT_SECONDS_PER_OP * n_columns * N * N * math.log2(N * N)
    n_w = int(np.count_nonzero(w))
    gemm = (_GEMM_OVERHEAD_SECONDS + _SCATTER_SECONDS_PER_OP * L.nnz * float(K) ** 2
            + _SYRK_SECONDS_PER_OP * n_w * float(n_columns) ** 2)
    if 8.0 * image_n * image_n * n_columns > _GEMM_MAX_BYTES:
        gemm = math.inf
    return direct, fft, gemm


def gemm_psf_normal_matrix(L: sp.csr_matrix, psf: np.ndarray, image_n: int, weights: np.ndarray,
                           unknowns: Optional[np.ndarray] = None) -> np.ndarray:
    """``(F L)^T diag(w) (F L)`` as ``G^T G`` with ``G = diag(w)^1/2 F L`` formed explicitly.

    ``G`` has a row per pixel of non-zero weight within the kernel's box of some entry of L (the other
    rows are zero) and a column per unknown; its columns are the blurred images of the source pixels
    (each entry of L scatters the kernel), and the product is one BLAS ``syrk``. Memory: ``8 n^2 m``
    bytes while G is formed over every pixel (167^2 pixels, 1,024 source pixels: 230 MB), and
    ``8 n_w m`` more while its weighted rows are copied out (where fewer than 90% are weighted).
    Arguments and result as :func:`fft_psf_normal_matrix` (upper triangle, C order).
    """
    n, w, k = _psf_route_inputs(L, psf, image_n, weights)
    idx = np.arange(L.shape[1]) if unknowns is None else np.asarray(unknowns, dtype=np.int64)
    Lc = sp.csc_matrix(L)
    # pixels some column of L reaches through the kernel's box: the other rows of G are zero
    hit = np.zeros(n * n, dtype=np.uint8)
    hit[Lc[:, idx].indices] = 1
    reach = ndimage.maximum_filter(hit.reshape(n, n), size=k.shape[0], mode="constant").reshape(-1) > 0
    used = np.flatnonzero((w > 0) & reach)
    if idx.size == 0 or used.size == 0:
        return np.zeros((idx.size, idx.size))
    Gt = _normal_kernels.blurred_columns(n, np.ascontiguousarray(k), Lc.indptr.astype(np.int64),
                                         Lc.indices.astype(np.int64), Lc.data.astype(np.float64), idx)
    if used.size < 0.9 * n * n:  # the product's cost is per pixel: leave the unweighted ones out
        Gt = Gt[:, used]
        Gt *= np.sqrt(w[used])[None, :]
    else:
        Gt *= np.sqrt(w)[None, :]
    P = scipy.linalg.blas.dsyrk(1.0, Gt.T, trans=1, lower=0)  # Gt.T is F-ordered (n_w, m): Gt Gt^T
    return np.ascontiguousarray(np.triu(P))


def fft_psf_normal_matrix(L: sp.csr_matrix, psf: np.ndarray, image_n: int, weights: np.ndarray,
                          unknowns: Optional[np.ndarray] = None, chunk: int = 64,
                          workers: Optional[int] = None) -> np.ndarray:
    """``(F L)^T diag(w) (F L)`` by FFT: ``L^T Q`` with ``Q = F^T diag(w) F L`` formed column by column.

    The columns of L (restricted to ``unknowns``) are scattered into ``chunk`` images at a time,
    blurred with the kernel (F), weighted, and blurred with the flipped kernel (F^T), each by an FFT
    of side :func:`_fft_side` (zero padding: no wrap-around into the image; the transforms skip the
    rows that are known to be zero or not needed). A column no ray of a pixel with weight reaches
    through the PSF's support gives exact zeros (as the direct route does).

    Parameters
    ----------
    L : scipy.sparse.csr_matrix
        ``(image_n^2, n_src)`` lensing matrix.
    psf : ndarray
        Odd square kernel of F (``F @ x == convolve2d(x, psf, mode="same")``).
    image_n : int
        Image pixels per side.
    weights : ndarray
        ``(image_n^2,)`` non-negative weights (0 leaves a pixel out).
    unknowns : ndarray of int, optional
        Sorted source-pixel (column) indices to keep (default: all).
    chunk : int
        Columns transformed together (memory about ``6 chunk N^2`` doubles).
    workers : int, optional
        Threads of :mod:`scipy.fft` (default: Numba's current thread count).

    Returns
    -------
    ndarray
        C-ordered ``(n_unknowns, n_unknowns)``: the upper triangle (``j >= i``) holds the matrix,
        the strict lower triangle is zero, as from the direct route.
    """
    import numba

    n, w, k = _psf_route_inputs(L, psf, image_n, weights)
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    workers = numba.get_num_threads() if workers is None else int(workers)
    idx = np.arange(L.shape[1]) if unknowns is None else np.asarray(unknowns, dtype=np.int64)
    K = k.shape[0]
    c = (K - 1) // 2
    N = _fft_side(n, K)
    half = N // 2 + 1
    kk = np.zeros((N, N))
    wrap = (np.arange(K) - c) % N  # the kernel centred on pixel (0, 0), periodically
    kk[np.ix_(wrap, wrap)] = k
    kh = sfft.rfft2(kk, workers=workers)
    kh_t = np.conj(kh)  # F^T: the flipped kernel
    # pixels whose L entries can reach a weighted pixel through the kernel's support
    W = w.reshape(n, n)
    support = (k != 0).astype(np.float64)
    reach = sfft.irfft2(sfft.rfft2(np.pad((W > 0).astype(np.float64), ((0, N - n), (0, N - n))), workers=workers)
                        * np.conj(sfft.rfft2(np.pad(support, ((0, N - K), (0, N - K))), workers=workers)),
                        s=(N, N), workers=workers)
    # correlation with the support: reach[p] counts weighted pixels i with k[i - p + c] != 0
    reach = np.roll(reach, (c, c), axis=(0, 1))[:n, :n] > 0.5
    Lu = sp.csr_matrix(L[:, idx]) if idx.size != L.shape[1] else sp.csr_matrix(L)
    Lu = sp.diags(reach.reshape(-1).astype(np.float64)) @ Lu  # rows that reach no weighted pixel: out
    Lu.eliminate_zeros()
    Lc = Lu.tocsc()
    cols = np.flatnonzero(np.diff(Lc.indptr) > 0)
    LT = Lu.T.tocsr()
    out = np.zeros((idx.size, idx.size))
    for s0 in range(0, cols.size, chunk):
        cc = cols[s0:s0 + chunk]
        m = cc.size
        sub = Lc[:, cc].tocoo()
        x = np.zeros((m, n, n))
        x[sub.col, sub.row // n, sub.row % n] = sub.data  # one entry per (row, column) of L
        y = _fft_blur(x, kh, N, n, half, workers)  # F L
        y *= W
        z = _fft_blur(y, kh_t, N, n, half, workers)  # F^T W F L
        out[:, cc] = LT @ z.reshape(m, n * n).T
    return np.triu(out)


def _fft_blur(x: np.ndarray, kh: np.ndarray, N: int, n: int, half: int, workers: int) -> np.ndarray:
    """'same' convolutions of the ``(m, n, n)`` images ``x`` with the kernel of transform ``kh``
    (``N x half``), zero padded to ``N``; the row transforms of the zero padding and of the rows
    not kept are skipped."""
    a = sfft.rfft(x, n=N, axis=-1, workers=workers)  # (m, n, half): only the image's rows
    a = sfft.fft(a, n=N, axis=-2, workers=workers, overwrite_x=True)  # (m, N, half)
    a *= kh
    a = sfft.ifft(a, axis=-2, workers=workers, overwrite_x=True)[:, :n, :]
    return sfft.irfft(a, n=N, axis=-1, workers=workers)[:, :, :n]


def lens_psf_normal_matrix(L: sp.csr_matrix, psf: np.ndarray, image_n: int, source_n: int, weights: np.ndarray,
                           unknowns: Optional[np.ndarray] = None, method: str = "auto") -> np.ndarray:
    """``(F L)^T diag(w) (F L)`` as ``L^T (F^T diag(w) F) L``, dense, upper triangle (see
    :func:`sparse_normal_matrix` for the layout), restricted to ``unknowns``; ``image_n``, ``source_n``
    are the grid sides (pixels). ``method``: ``"direct"``, ``"fft"``, ``"gemm"`` or ``"auto"`` (the
    cheapest by the module docstring's cost estimates; all agree to rounding)."""
    if method not in NORMAL_METHODS:
        raise ValueError(f"method must be one of {NORMAL_METHODS}, got {method!r}")
    w = _weights(weights, L.shape[0])
    idx = np.arange(L.shape[1]) if unknowns is None else np.asarray(unknowns, dtype=np.int64)
    if method == "auto":
        costs = dict(zip(("direct", "fft", "gemm"), _route_costs(L, np.shape(psf)[0], image_n, w, idx.size)))
        method = min(costs, key=costs.get)
        log.debug("normal matrix: %s route (estimated seconds %s)", method, costs)
    if method == "fft":
        return fft_psf_normal_matrix(L, psf, image_n, w, idx)
    if method == "gemm":
        return gemm_psf_normal_matrix(L, psf, image_n, w, idx)
    row_of = np.full(L.shape[1], -1, dtype=np.int64)
    row_of[idx] = np.arange(idx.size)
    Lc = L.tocsc()
    return _normal_kernels.psf_normal_matrix(image_n, psf, w, L.indptr, L.indices, L.data, Lc.indptr, Lc.indices,
                                             Lc.data, source_n, row_of, idx.size)
