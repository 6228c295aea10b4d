"""Numba kernel for the normal matrix ``M^T W M`` of a sparse M and diagonal weights W."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def normal_matrix_csr(r_ptr, r_idx, r_val, c_ptr, c_idx, c_val, w, n):
    """CSR arrays of ``M^T diag(w) M`` (``n x n``) from M in CSR (``r_*``) and CSC (``c_*``) form.

    Row ``a`` is ``sum_k M[k, a] w[k] M[k, :]`` over the image rows ``k`` of column ``a``,
    accumulated densely and written with sorted columns.
    """
    counts = np.zeros(n + 1, dtype=np.int64)
    n_chunks = min(n, 64)
    step = (n + n_chunks - 1) // n_chunks
    for c in nb.prange(n_chunks):
        mark = np.full(n, -1, dtype=np.int64)
        for a in range(c * step, min(n, (c + 1) * step)):
            cnt = 0
            for p in range(c_ptr[a], c_ptr[a + 1]):
                k = c_idx[p]
                for q in range(r_ptr[k], r_ptr[k + 1]):
                    b = r_idx[q]
                    if mark[b] != a:
                        mark[b] = a
                        cnt += 1
            counts[a + 1] = cnt
    indptr = np.cumsum(counts)
    indices = np.empty(indptr[n], dtype=np.int32)
    data = np.empty(indptr[n])
    for c in nb.prange(n_chunks):
        mark = np.full(n, -1, dtype=np.int64)
        acc = np.zeros(n)
        for a in range(c * step, min(n, (c + 1) * step)):
            start = indptr[a]
            cnt = 0
            for p in range(c_ptr[a], c_ptr[a + 1]):
                k = c_idx[p]
                wa = c_val[p] * w[k]
                for q in range(r_ptr[k], r_ptr[k + 1]):
                    b = r_idx[q]
                    if mark[b] != a:
                        mark[b] = a
                        indices[start + cnt] = b
                        cnt += 1
                    acc[b] += wa * r_val[q]
            row = indices[start:start + cnt]
            row.sort()
            for t in range(cnt):
                data[start + t] = acc[row[t]]
                acc[row[t]] = 0.0
    return indptr, indices, data


@nb.njit(parallel=True, cache=True)
def normal_matrix_dense(r_ptr, r_idx, r_val, c_ptr, c_idx, c_val, w, n):
    """``M^T diag(w) M`` as a dense symmetric ``n x n`` array (upper triangle accumulated, then mirrored).

    M is given in CSR (``r_*``, sorted columns) and CSC (``c_*``) form. Rows are
    dealt to threads round-robin, since rows near the top hold more of the upper triangle.
    """
    out = np.zeros((n, n))
    n_chunks = min(n, 64)
    for c in nb.prange(n_chunks):
        for a in range(c, n, n_chunks):
            for p in range(c_ptr[a], c_ptr[a + 1]):
                k = c_idx[p]
                wa = c_val[p] * w[k]
                lo = r_ptr[k]
                hi = r_ptr[k + 1]
                q0 = lo + np.searchsorted(r_idx[lo:hi], a)
                for q in range(q0, hi):
                    out[a, r_idx[q]] += wa * r_val[q]
    for c in nb.prange(n_chunks):
        for a in range(c, n, n_chunks):
            for b in range(a):
                out[a, b] = out[b, a]
    return out
