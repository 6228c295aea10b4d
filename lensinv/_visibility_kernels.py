"""Numba kernels of the visibility operator's normal matrix ``L^T B L`` (see :mod:`lensinv.visibility`).

``B`` is the natural-weighted dirty beam between image pixels, ``B_jl = beam(x_j - x_l, y_j - y_l)``,
a function of the pixel separation only. It is never formed: rows of ``B L`` are built a batch of
image pixels at a time and folded into the result.
"""

from __future__ import annotations

import numba as nb


@nb.njit(parallel=True, cache=True)
def beam_rows(buf, r0, row_i, col_i, ptr, col, val, beam, half):
    """``buf[j - r0] = 0.5 beam(0) L_j + sum_{l > j} beam(p_j - p_l) L_l`` for the reached image
    pixels ``j`` in ``[r0, r0 + len(buf))``.

    ``row_i, col_i`` are the reached pixels' row and column on the image grid (sorted by flat
    index), ``ptr, col, val`` their rows of ``L`` in CSR form with the columns numbered over the
    unknowns, ``beam[dy + half, dx + half]`` the beam at a separation of ``(dy, dx)`` pixels.
    Only pairs ``l > j`` are summed: the caller forms ``Q + Q^T``.
    """
    n_r = row_i.size
    nb_rows = buf.shape[0]
    for jj in nb.prange(nb_rows):
        j = r0 + jj
        out = buf[jj]
        out[:] = 0.0
        if j >= n_r:
            continue
        yj = row_i[j] + half
        xj = col_i[j] + half
        c0 = 0.5 * beam[half, half]
        for q in range(ptr[j], ptr[j + 1]):
            out[col[q]] += c0 * val[q]
        for lp in range(j + 1, n_r):
            c = beam[yj - row_i[lp], xj - col_i[lp]]
            for q in range(ptr[lp], ptr[lp + 1]):
                out[col[q]] += c * val[q]


@nb.njit(parallel=True, cache=True)
def fold_rows(Q, buf, r0, cptr, crow, cval, cursor):
    """``Q[a, :] += sum_j L_ja buf[j - r0, :]`` over the reached pixels ``j`` of the batch.

    ``cptr, crow, cval``: ``L`` (reached rows, unknown columns) in CSC form with sorted rows;
    ``cursor[a]`` is the first entry of column ``a`` not yet folded (advanced here).
    """
    n_u = Q.shape[0]
    r1 = r0 + buf.shape[0]
    for a in nb.prange(n_u):
        p = cursor[a]
        end = cptr[a + 1]
        qa = Q[a]
        while p < end and crow[p] < r1:
            v = cval[p]
            src = buf[crow[p] - r0]
            for b in range(n_u):
                qa[b] += v * src[b]
            p += 1
        cursor[a] = p


@nb.njit(cache=True)
def _tile_pair(t, nblk):
    """Tile pair number ``t`` -> ``(bi, bj)``, ``bj >= bi``, row-major over the upper triangle."""
    bi = 0
    rem = t
    while rem >= nblk - bi:
        rem -= nblk - bi
        bi += 1
    return bi, bi + rem


@nb.njit(parallel=True, cache=True)
def symmetrise(Q):
    """``Q <- Q + Q^T`` in place, by pairs of 32 x 32 tiles (both stay in L1) dealt evenly to threads."""
    n = Q.shape[0]
    bs = 32
    nblk = (n + bs - 1) // bs
    n_pairs = nblk * (nblk + 1) // 2
    for t in nb.prange(n_pairs):
        bi, bj = _tile_pair(t, nblk)
        i0 = bi * bs
        i1 = min(n, i0 + bs)
        j0 = bj * bs
        j1 = min(n, j0 + bs)
        for i in range(i0, i1):
            for j in range(max(j0, i), j1):
                s = Q[i, j] + Q[j, i]
                Q[i, j] = s
                Q[j, i] = s
