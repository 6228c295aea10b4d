"""Normal matrices ``Re(M^H W M)`` of observation operators, for linear solvers.

:func:`sparse_normal_matrix` forms it for any explicit real sparse ``M``;
:meth:`lensinv.LensOperator.normal_matrix` has a faster route for ``M = F L``
(``L^T (F^T W F) L``). Both restrict it to a set of source pixels (the unknowns)
and return either a dense array of which only the upper triangle is filled, or a
full symmetric sparse matrix.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import scipy.sparse as sp

from . import _normal_kernels


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


def lens_psf_normal_matrix(L: sp.csr_matrix, psf: np.ndarray, image_n: int, source_n: int, weights: np.ndarray,
                           unknowns: Optional[np.ndarray] = None) -> np.ndarray:
    """``(F L)^T diag(w) (F L)`` as ``L^T (F^T diag(w) F) L``, dense, upper triangle (see
    :func:`sparse_normal_matrix` for the layout), restricted to ``unknowns``; ``image_n``, ``source_n`` are the grid sides (pixels)."""
    w = _weights(weights, L.shape[0])
    idx = np.arange(L.shape[1]) if unknowns is None else np.asarray(unknowns, dtype=np.int64)
    row_of = np.full(L.shape[1], -1, dtype=np.int64)
    row_of[idx] = np.arange(idx.size)
    Lc = L.tocsc()
    return _normal_kernels.psf_normal_matrix(image_n, psf, w, L.indptr, L.indices, L.data, Lc.indptr, Lc.indices,
                                             Lc.data, source_n, row_of, idx.size)
