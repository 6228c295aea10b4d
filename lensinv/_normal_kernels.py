"""Numba kernels of the normal matrix ``M^T diag(w) M`` (for :meth:`lensinv.LensOperator.normal_matrix`
and :func:`lensinv.normal.sparse_normal_matrix`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

# the source-plane boxes of windows of rows of L, shared with the forming of F L
from ._kernels import windowed_row_boxes

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


def normal_matrix_dense(r_ptr, r_idx, r_val, c_ptr, c_idx, c_val, w, n):
    """``M^T diag(w) M`` as a dense ``n x n`` array holding the upper triangle (``j >= i``; the strict
    lower triangle is zero).

    M is given in CSR (``r_*``, sorted columns) and CSC (``c_*``) form. Rows are
    dealt to threads round-robin, since rows near the top hold more of the upper triangle.
    """
    out = np.zeros((n, n))  # NumPy's zeros: fresh pages come zeroed, no second pass
    _normal_matrix_dense(out, r_ptr, r_idx, r_val, c_ptr, c_idx, c_val, w)
    return out


@nb.njit(parallel=True, cache=True)
def _normal_matrix_dense(out, r_ptr, r_idx, r_val, c_ptr, c_idx, c_val, w):
    n = out.shape[0]
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
    return out


@nb.njit(cache=True)
def _autocorrelation(kernel):
    """``acorr[o] = sum_t kernel[t] kernel[t - o]`` over offsets ``o`` in ``[-2c, 2c]^2``."""
    K = kernel.shape[0]
    c = (K - 1) // 2
    out = np.zeros((4 * c + 1, 4 * c + 1))
    for m in range(K):
        for l in range(K):
            for m2 in range(K):
                for l2 in range(K):
                    out[m - m2 + 2 * c, l - l2 + 2 * c] += kernel[m, l] * kernel[m2, l2]
    return out


@nb.njit(cache=True)
def _gram_row(a, b, n, kernel, w, acorr, out):
    """``out[o] = (F^T diag(w) F)[(a, b), (a, b) + o]`` for offsets ``o`` in ``[-2c, 2c]^2``.

    ``F[(i, j), (a, b)] = kernel[i - a + c, j - b + c]``. Where the weights are equal over the PSF
    window of ``(a, b)`` and the window lies inside the image, this is ``w * acorr``.
    """
    K = kernel.shape[0]
    c = (K - 1) // 2
    w0 = w[a * n + b]
    uniform = a - c >= 0 and a + c < n and b - c >= 0 and b + c < n
    if uniform:
        for i in range(a - c, a + c + 1):
            for j in range(b - c, b + c + 1):
                if w[i * n + j] != w0:
                    uniform = False
    if uniform:
        for u in range(out.shape[0]):
            for v in range(out.shape[1]):
                out[u, v] = w0 * acorr[u, v]
        return
    out[:, :] = 0.0
    for i in range(max(a - c, 0), min(a + c, n - 1) + 1):
        for j in range(max(b - c, 0), min(b + c, n - 1) + 1):
            wk = w[i * n + j] * kernel[i - a + c, j - b + c]
            if wk == 0.0:
                continue
            # (i, j) is also in the window of (a, b) + o for o = (i - a, j - b) - (m - c, l - c)
            for m in range(K):
                for l in range(K):
                    out[i - a - m + 3 * c, j - b - l + 3 * c] += wk * kernel[m, l]


def psf_normal_matrix(n, kernel, w, l_ptr, l_idx, l_val, lc_ptr, lc_row, lc_val, ns, unknown, n_unknown):
    """``M^T diag(w) M`` for ``M = F L`` as ``L^T Q`` with ``Q = (F^T diag(w) F) L``, dense, upper triangle.

    ``n`` image pixels per side, ``kernel`` the (odd, square) PSF of F, ``w`` per-pixel weights
    (zero for pixels not used), L in CSR (``l_*``) and CSC (``lc_*``: column pointers, row indices,
    values) on an ``ns x ns`` source grid, ``unknown`` mapping each source pixel to its row in the
    output (-1: not solved for).

    ``F^T diag(w) F`` couples image pixels up to ``2c`` apart; where the weights are uniform over a
    PSF window its row is ``w`` times the PSF's autocorrelation, else it is summed exactly. Each
    row of Q that L needs is accumulated on a dense box of source pixels, so the work is about
    ``nnz(L) * (4c + 1)^2`` for Q plus ``nnz(L) * box`` for P, several times less than summing
    ``w_k m_k m_k^T`` over the PSF-wide rows ``m_k`` of M.
    Returns a C-ordered ``(n_unknown, n_unknown)`` array whose upper triangle (``j >= i``) holds
    the matrix; the strict lower triangle is zero.
    """
    q = _gram_lens_rows(n, kernel, w, l_ptr, l_idx, l_val, ns)
    out = np.zeros((n_unknown, n_unknown))  # NumPy's zeros: fresh pages come zeroed, no second pass
    _lt_times_boxes(out, lc_ptr, lc_row, lc_val, ns, unknown, *q)
    return out


@nb.njit(parallel=True, cache=True)
def _gram_lens_rows(n, kernel, w, l_ptr, l_idx, l_val, ns):
    """The rows of ``Q = (F^T diag(w) F) L`` that L uses, each on a dense box of source pixels.

    Returns ``row_of`` (image pixel -> Q row, -1 if none), the boxes (first row, first column,
    width per image pixel) and the rows' offsets and values in one flat array.
    """
    npix = n * n
    c = (kernel.shape[0] - 1) // 2
    h = 2 * c
    acorr = _autocorrelation(kernel)
    # the box of each Q row: the source pixels of the rows of L within its Gram window
    l_r, l_c, wr0, wr1, wc0, wc1 = windowed_row_boxes(n, h, l_ptr, l_idx, ns)
    rows = np.flatnonzero(np.diff(l_ptr) > 0)
    nr = rows.shape[0]
    sizes = np.zeros(nr + 1, dtype=np.int64)
    row_of = np.full(npix, -1, dtype=np.int64)
    for r in range(nr):
        k = rows[r]
        row_of[k] = r
        sizes[r + 1] = (wr1[k] - wr0[k] + 1) * (wc1[k] - wc0[k] + 1)
    q_off = np.cumsum(sizes)
    q_val = np.zeros(q_off[nr])
    n_chunks = min(max(nr, 1), 256)
    for ch in nb.prange(n_chunks):
        gram = np.empty((2 * h + 1, 2 * h + 1))
        for r in range(ch, nr, n_chunks):
            k = rows[r]
            a, b = k // n, k % n
            _gram_row(a, b, n, kernel, w, acorr, gram)
            r0, c0 = wr0[k], wc0[k]
            bw = wc1[k] - c0 + 1
            base = q_off[r] - r0 * bw - c0
            for i in range(max(a - h, 0), min(a + h, n - 1) + 1):
                for j in range(max(b - h, 0), min(b + h, n - 1) + 1):
                    g = gram[i - a + h, j - b + h]
                    if g == 0.0:
                        continue
                    kk = i * n + j
                    for p in range(l_ptr[kk], l_ptr[kk + 1]):
                        q_val[base + l_r[p] * bw + l_c[p]] += g * l_val[p]
    return row_of, wr0, wr1, wc0, wc1, q_off, q_val


@nb.njit(parallel=True, cache=True)
def _lt_times_boxes(out, lc_ptr, lc_row, lc_val, ns, unknown, row_of, wr0, wr1, wc0, wc1, q_off, q_val):
    """Upper triangle of ``L^T Q`` (Q's rows on boxes, from :func:`_gram_lens_rows`), rows dealt
    round-robin to threads (upper rows hold more of the triangle). ``unknown`` must be increasing
    over the solved-for pixels, so the upper triangle is the part of each box at or after ``a``.

    Each row is summed over the full source grid (contiguous runs of box rows, which vectorise):
    straight into the output where every pixel is solved for, else into a per-thread buffer
    gathered into the row's solved-for pixels afterwards. ``out`` is the zeroed ``(n_unknown,
    n_unknown)`` output.
    """
    n_unknown = out.shape[0]
    ns2 = unknown.shape[0]
    full = n_unknown == ns2  # then unknown is the identity
    n_chunks = min(max(ns2, 1), 256)
    for ch in nb.prange(n_chunks):
        buf = np.zeros(0 if full else ns2)
        for a in range(ch, ns2, n_chunks):
            ua = unknown[a]
            if ua < 0:
                continue
            ra, ca = a // ns, a % ns
            acc = out[ua] if full else buf
            lo, hi = ns2, -1
            for p in range(lc_ptr[a], lc_ptr[a + 1]):
                k = lc_row[p]
                v = lc_val[p]
                r0, r1, c0, c1 = wr0[k], wr1[k], wc0[k], wc1[k]
                bw = c1 - c0 + 1
                base = q_off[row_of[k]]
                for sr in range(max(r0, ra), r1 + 1):
                    first = max(c0, ca) if sr == ra else c0
                    s0 = sr * ns + first
                    o0 = base + (sr - r0) * bw + first - c0
                    for t in range(c1 - first + 1):
                        acc[s0 + t] += v * q_val[o0 + t]
                    lo = min(lo, s0)
                    hi = max(hi, sr * ns + c1)
            if not full:
                row = out[ua]
                for b in range(lo, hi + 1):
                    ub = unknown[b]
                    if ub >= 0:
                        row[ub] = buf[b]
                    buf[b] = 0.0
    return out


@nb.njit(parallel=True, cache=True)
def blurred_columns(n, kernel, lc_ptr, lc_row, lc_val, cols):
    """``(F L)^T`` for the source columns ``cols``: ``out[j, p] = sum_r L[r, cols[j]] kernel[p - r + c]`` over
    the ``n x n`` image pixels ``p`` (``c``: the kernel's centre; F is the 'same' convolution with
    ``kernel``), from L in CSC form (``lc_*``). Each source column is scattered into its own output row,
    so the columns run in parallel without conflicts; the kernel's rows are clipped to the image once,
    so the inner loop is a contiguous, branch-free update."""
    m = cols.size
    K = kernel.shape[0]
    c = (K - 1) // 2
    out = np.zeros((m, n * n))
    for jj in nb.prange(m):
        j = cols[jj]
        row = out[jj]
        for t in range(lc_ptr[j], lc_ptr[j + 1]):
            r = lc_row[t]
            v = lc_val[t]
            ri = r // n
            rj = r - ri * n
            a0, a1 = max(0, c - ri), min(K, n + c - ri)
            b0, b1 = max(0, c - rj), min(K, n + c - rj)
            for a in range(a0, a1):
                base = (ri + a - c) * n + rj - c
                for b in range(b0, b1):
                    row[base + b] += v * kernel[a, b]
    return out
