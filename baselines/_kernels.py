"""Numba kernels for the dense factorisations' buffers and the 2x2-binned normal matrix."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def scale_lower_f32(p, diag, scale, out, tiny):
    """``out[i, j] = float32(scale[i] p[i, j] scale[j])`` on the lower triangle (``i > j``) of the
    Fortran-ordered ``p``, zero where that is below ``tiny`` in magnitude, and ``scale[i]^2 diag[i]``
    on the diagonal; ``out``'s strict upper triangle is left as it is."""
    n = p.shape[0]
    pt = p.T  # C-ordered views: pt[j, i] = p[i, j], column j of p is row j of pt
    ot = out.T
    for j in nb.prange(n):
        sj = scale[j]
        ot[j, j] = scale[j] * diag[j] * sj
        for i in range(j + 1, n):
            v = scale[i] * pt[j, i] * sj
            ot[j, i] = v if abs(v) >= tiny else 0.0


@nb.njit(parallel=True, cache=True)
def restore_upper(a, diag):
    """Copy the strict lower triangle of the Fortran-ordered square ``a`` onto its strict upper
    triangle and set its diagonal to ``diag``, in blocks (the transposed reads stay in cache)."""
    n = a.shape[0]
    at = a.T  # C-ordered: at[j, i] = a[i, j]
    bs = 64
    nb_ = (n + bs - 1) // bs
    for bj in nb.prange(nb_):
        j0 = bj * bs
        j1 = min(n, j0 + bs)
        for bi in range(bj, nb_):
            i0 = bi * bs
            i1 = min(n, i0 + bs)
            for j in range(j0, j1):
                for i in range(max(i0, j + 1), i1):
                    at[i, j] = at[j, i]  # a[j, i] (upper) = a[i, j] (lower)
    for j in range(n):
        a[j, j] = diag[j]


@nb.njit(parallel=True, cache=True)
def coarsen_upper(p, starts, members, group, m):
    """``U^T P U`` (dense, ``m x m``, symmetric) for ``U[i, group[i]] = 1``: the normal matrix of a
    source on coarser pixels (each a group of fine unknowns), from the fine ``P`` held in the upper
    triangle of the C-ordered ``p`` (``j >= i``).

    ``members[starts[c]:starts[c + 1]]`` are the fine unknowns of coarse pixel ``c``. Each thread
    sums the rows of its coarse pixels (``T = U^T triu(P) U``); then ``U^T P U = T + T^T - D``
    with ``D`` the block sums of P's diagonal.
    """
    n = p.shape[0]
    t = np.zeros((m, m))
    for c in nb.prange(m):
        row = t[c]
        for k in range(starts[c], starts[c + 1]):
            i = members[k]
            pi = p[i]
            for j in range(i, n):
                row[group[j]] += pi[j]
    out = t + t.T
    for i in range(n):
        out[group[i], group[i]] -= p[i, i]
    return out
