"""Numba kernels: deflection angles, the lensing matrix L and the PSF matrix F.

A lens reaches the kernels as ``(fns, params)`` (see :attr:`lensinv.Lens.kernel_args`): a tuple
of its components' profile kernels, called through function pointers, and their float64
parameter rows. So one compiled kernel serves any combination of registered mass profiles, and
a new profile needs no change here.

Everything is float64. The operator kernels write CSR arrays directly
(row counts, prefix sum, fill), never a COO intermediate.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._vmath import JIT

# Largest source-plane bounding box (cells) for the dense accumulator;
# pixels whose rays spread wider (e.g. near an SIE centre) use the sort path.
_MAX_BOX = 256


@nb.njit(**JIT)
def deflect_into(x, y, fns, params, ax, ay):
    """Add the deflection of every component at ``(x, y)`` (flat arrays, arcsec) to ``ax, ay``.

    ``fns[c]`` is component ``c``'s profile kernel (``lensinv.mass.DEFLECTION_SIGNATURE``) and
    ``params[c]`` its parameter row; each kernel loops over the rays itself (vectorised), so the
    call through a function pointer costs nothing per ray.
    """
    for c in range(len(fns)):
        fns[c](x, y, params[c], ax, ay)


_CHUNK = 4096


@nb.njit(parallel=True, **JIT)
def deflection_kernel(x, y, fns, params):
    """Deflection ``(alpha_x, alpha_y)`` at flat float64 arrays ``x, y`` (arcsec)."""
    n = x.shape[0]
    ax = np.zeros(n)
    ay = np.zeros(n)
    nchunk = (n + _CHUNK - 1) // _CHUNK
    for c in nb.prange(nchunk):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        deflect_into(x[lo:hi], y[lo:hi], fns, params, ax[lo:hi], ay[lo:hi])
    return ax, ay


@nb.njit(**JIT)
def _trace_pixels(i, j_lo, j_hi, n_img, d_img, d_src, n_src, ss, fns, params, fx, fy, cell_i, cell_j):
    """Ray trace the sub-pixels of pixels ``(i, j_lo:j_hi)``.

    On return ``fx, fy`` hold the bilinear weights' fractional parts and
    ``cell_i, cell_j`` the lower-left source cell of each ray, with ``-2`` in
    ``cell_i`` for rays that miss the grid. Source-pixel units: 0 is the
    centre of the first pixel; cells run from -1 to ``n_src - 1``, so the 2x2
    stencil may touch the pad rows/columns ``-1`` and ``n_src`` (zero source).
    """
    half_i = (n_img - 1) / 2.0
    half_s = (n_src - 1) / 2.0
    nray = ss * ss
    m = (j_hi - j_lo) * nray
    ax = np.zeros(m)
    ay = np.zeros(m)
    for j in range(j_lo, j_hi):
        for a in range(ss):
            y = (i - half_i + (a + 0.5) / ss - 0.5) * d_img
            base = (j - j_lo) * nray + a * ss
            for b in range(ss):
                fx[base + b] = (j - half_i + (b + 0.5) / ss - 0.5) * d_img
                fy[base + b] = y
    deflect_into(fx[:m], fy[:m], fns, params, ax, ay)
    inv = 1.0 / d_src
    top = float(n_src)
    for r in range(m):
        gx = (fx[r] - ax[r]) * inv + half_s
        gy = (fy[r] - ay[r]) * inv + half_s
        ok = gx > -1.0 and gx < top and gy > -1.0 and gy < top
        gx = gx if ok else 0.0
        gy = gy if ok else 0.0
        fj = math.floor(gx)
        fi = math.floor(gy)
        fx[r] = gx - fj
        fy[r] = gy - fi
        cell_j[r] = int(fj)
        cell_i[r] = int(fi) if ok else -2


@nb.njit(inline="always", **JIT)
def _pixel_entries(tx, ty, cell_i, cell_j, start, nray, n_src, scale, box, sc_cols, sc_vals,
                   out_cols, out_vals, offset, limit):
    """Merge one image pixel's bilinear weights per source pixel.

    Contributions to the same source pixel are summed and columns come out in
    increasing order. Returns the number of distinct entries and stores the
    first ``limit`` of them at ``out_*[offset:]``.
    """
    imin = n_src
    imax = -2
    jmin = n_src
    jmax = -2
    for r in range(start, start + nray):
        ci = cell_i[r]
        cj = cell_j[r]
        if ci > -2:
            imin = min(imin, ci)
            imax = max(imax, ci)
            jmin = min(jmin, cj)
            jmax = max(jmax, cj)
    if imax < -1:
        return 0
    bw = jmax - jmin + 2  # box over cells [imin, imax + 1] x [jmin, jmax + 1], pads included
    bh = imax - imin + 2
    cnt = 0
    if bw * bh <= box.shape[0]:
        for t in range(bw * bh):
            box[t] = 0.0
        for r in range(start, start + nray):
            if cell_i[r] > -2:
                p = (cell_i[r] - imin) * bw + (cell_j[r] - jmin)
                wx = tx[r]
                wy = ty[r]
                box[p] += (1.0 - wy) * (1.0 - wx)
                box[p + 1] += (1.0 - wy) * wx
                box[p + bw] += wy * (1.0 - wx)
                box[p + bw + 1] += wy * wx
        for bi in range(bh):
            ii = imin + bi
            if ii < 0 or ii >= n_src:
                continue
            for bj in range(bw):
                jj = jmin + bj
                v = box[bi * bw + bj]
                if jj >= 0 and jj < n_src and v > 0.0:
                    if cnt < limit:
                        out_cols[offset + cnt] = ii * n_src + jj
                        out_vals[offset + cnt] = v * scale
                    cnt += 1
        return cnt
    # rays spread wide (e.g. near an SIE centre): collect, sort by column, merge
    m = 0
    for r in range(start, start + nray):
        if cell_i[r] > -2:
            for di in range(2):
                ii = cell_i[r] + di
                wy = ty[r] if di == 1 else 1.0 - ty[r]
                for dj in range(2):
                    jj = cell_j[r] + dj
                    w = wy * (tx[r] if dj == 1 else 1.0 - tx[r])
                    if ii >= 0 and ii < n_src and jj >= 0 and jj < n_src and w > 0.0:
                        sc_cols[m] = ii * n_src + jj
                        sc_vals[m] = w
                        m += 1
    order = np.argsort(sc_cols[:m], kind="mergesort")
    last = -1
    acc = 0.0
    for t in range(m):
        col = sc_cols[order[t]]
        if col != last:
            if last >= 0:
                if cnt < limit:
                    out_cols[offset + cnt] = last
                    out_vals[offset + cnt] = acc * scale
                cnt += 1
            last = col
            acc = 0.0
        acc += sc_vals[order[t]]
    if last >= 0:
        if cnt < limit:
            out_cols[offset + cnt] = last
            out_vals[offset + cnt] = acc * scale
        cnt += 1
    return cnt


_ROW_SLOT = 16  # average entries per pixel reserved for each row of the image


@nb.njit(parallel=True, **JIT)
def lensing_csr_kernel(n_img, d_img, n_src, d_src, ss, fns, params):
    """CSR arrays ``(indptr, indices, data)`` of the lensing matrix L.

    Image pixel ``(i, j)`` is split into ``ss x ss`` sub-pixels at offsets
    ``(a + 0.5) / ss - 0.5`` pixels; each is ray traced and interpolated
    bilinearly on the source grid (outside counts as zero); the row is the mean
    over sub-pixels. Rays are traced once, one image row at a time
    (vectorised). Each image row's merged entries are written contiguously
    into a reserved span; the rare rows that overflow it (rays spread wide,
    near an SIE centre) are traced again with an exact-size buffer. The spans
    are then packed into CSR.
    """
    npix = n_img * n_img
    nray = ss * ss
    scale = 1.0 / nray
    cap = 4 * nray
    row_cap = n_img * min(cap, _ROW_SLOT)
    row_cols = np.empty(n_img * row_cap, dtype=np.int32)
    row_vals = np.empty(n_img * row_cap)
    counts = np.zeros(npix + 1, dtype=np.int64)
    row_tot = np.zeros(n_img, dtype=np.int64)
    for i in nb.prange(n_img):
        fx = np.empty(n_img * nray)
        fy = np.empty(n_img * nray)
        ci = np.empty(n_img * nray, dtype=np.int64)
        cj = np.empty(n_img * nray, dtype=np.int64)
        box = np.empty(_MAX_BOX)
        sc_cols = np.empty(cap, dtype=np.int32)
        sc_vals = np.empty(cap)
        _trace_pixels(i, 0, n_img, n_img, d_img, d_src, n_src, ss, fns, params, fx, fy, ci, cj)
        used = 0
        for j in range(n_img):
            c = _pixel_entries(fx, fy, ci, cj, j * nray, nray, n_src, scale, box, sc_cols, sc_vals,
                               row_cols, row_vals, i * row_cap + used, max(row_cap - used, 0))
            counts[i * n_img + j + 1] = c
            used += c
        row_tot[i] = used
    indptr = np.cumsum(counts)
    nnz = indptr[npix]
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz)
    for i in nb.prange(n_img):
        p = indptr[i * n_img]
        c = row_tot[i]
        if c <= row_cap:
            indices[p:p + c] = row_cols[i * row_cap:i * row_cap + c]
            data[p:p + c] = row_vals[i * row_cap:i * row_cap + c]
        else:  # overflowed its span: trace again, writing straight into place
            fx = np.empty(n_img * nray)
            fy = np.empty(n_img * nray)
            ci = np.empty(n_img * nray, dtype=np.int64)
            cj = np.empty(n_img * nray, dtype=np.int64)
            box = np.empty(_MAX_BOX)
            sc_cols = np.empty(cap, dtype=np.int32)
            sc_vals = np.empty(cap)
            _trace_pixels(i, 0, n_img, n_img, d_img, d_src, n_src, ss, fns, params, fx, fy, ci, cj)
            for j in range(n_img):
                k = i * n_img + j
                _pixel_entries(fx, fy, ci, cj, j * nray, nray, n_src, scale, box, sc_cols, sc_vals,
                               indices, data, indptr[k], indptr[k + 1] - indptr[k])
    return indptr, indices, data


@nb.njit(cache=True)
def _psf_taps(kernel):
    """Non-zero taps of a convolution kernel as offsets ``(da, db) = (a - i, b - j)`` of the input
    pixel from the output pixel, with their values, in increasing input (column) order."""
    K = kernel.shape[0]
    c = (K - 1) // 2
    nz = 0
    for m in range(K):
        for l in range(K):
            if kernel[m, l] != 0.0:
                nz += 1
    da = np.empty(nz, dtype=np.int64)
    db = np.empty(nz, dtype=np.int64)
    tv = np.empty(nz)
    t = 0
    for m in range(K - 1, -1, -1):
        for l in range(K - 1, -1, -1):
            if kernel[m, l] != 0.0:
                da[t] = c - m
                db[t] = c - l
                tv[t] = kernel[m, l]
                t += 1
    return da, db, tv


@nb.njit(parallel=True, cache=True)
def psf_csr_kernel(n, kernel):
    """CSR arrays of the ``n^2 x n^2`` matrix of ``convolve2d(img, kernel, mode="same")``.

    ``out[i, j] = sum_{a, b} img[a, b] * kernel[i - a + c, j - b + c]`` with
    ``c = (K - 1) / 2`` for an odd ``K x K`` kernel; zero kernel entries are not stored.
    """
    da, db, tv = _psf_taps(kernel)
    nz = tv.shape[0]
    npix = n * n
    counts = np.zeros(npix + 1, dtype=np.int64)
    for i in nb.prange(n):
        for j in range(n):
            cnt = 0
            for t in range(nz):
                a = i + da[t]
                b = j + db[t]
                if a >= 0 and a < n and b >= 0 and b < n:
                    cnt += 1
            counts[i * n + j + 1] = cnt
    indptr = np.cumsum(counts)
    indices = np.empty(indptr[npix], dtype=np.int32)
    data = np.empty(indptr[npix])
    for i in nb.prange(n):
        for j in range(n):
            p = indptr[i * n + j]
            for t in range(nz):
                a = i + da[t]
                b = j + db[t]
                if a >= 0 and a < n and b >= 0 and b < n:
                    indices[p] = a * n + b
                    data[p] = tv[t]
                    p += 1
    return indptr, indices, data


@nb.njit(cache=True)
def _blurred_row(i, j, n, da, db, tv, l_ptr, l_r, l_c, l_val, ns, r0, r1, c0, c1, box,
                 out_cols, out_vals, offset, write):
    """Row ``(i, j)`` of ``F L``: the PSF-weighted sum of the neighbouring rows of L, accumulated
    densely over the box ``[r0, r1] x [c0, c1]`` of source pixels and scanned in column order."""
    bw = c1 - c0 + 1
    size = (r1 - r0 + 1) * bw
    for u in range(size):
        box[u] = 0.0
    for t in range(tv.shape[0]):
        a = i + da[t]
        b = j + db[t]
        if a >= 0 and a < n and b >= 0 and b < n:
            k = a * n + b
            w = tv[t]
            for p in range(l_ptr[k], l_ptr[k + 1]):
                box[(l_r[p] - r0) * bw + l_c[p] - c0] += w * l_val[p]
    cnt = 0
    for u in range(size):
        if box[u] != 0.0:
            if write:
                out_cols[offset + cnt] = (r0 + u // bw) * ns + c0 + u % bw
                out_vals[offset + cnt] = box[u]
            cnt += 1
    return cnt


@nb.njit(cache=True, inline="always")
def _better(best, x, take_max, empty):
    if x == empty:
        return best
    if best == empty:
        return x
    return max(best, x) if take_max else min(best, x)


@nb.njit(parallel=True, cache=True)
def _window_extreme(v, n, h, take_max, empty):
    """Separable running min (or max) of an ``n x n`` map over a ``(2h+1)^2`` window, ignoring ``empty``."""
    tmp = np.empty(n * n, dtype=np.int64)
    out = np.empty(n * n, dtype=np.int64)
    for i in nb.prange(n):
        for j in range(n):
            best = empty
            for b in range(max(j - h, 0), min(j + h, n - 1) + 1):
                best = _better(best, v[i * n + b], take_max, empty)
            tmp[i * n + j] = best
    for i in nb.prange(n):
        for j in range(n):
            best = empty
            for a in range(max(i - h, 0), min(i + h, n - 1) + 1):
                best = _better(best, tmp[a * n + j], take_max, empty)
            out[i * n + j] = best
    return out


@nb.njit(parallel=True, cache=True)
def windowed_row_boxes(n, h, l_ptr, l_idx, ns):
    """Source-plane rows and columns of L's entries (``l_r``, ``l_c``), and for each image pixel the
    bounding box ``[rmin, rmax] x [cmin, cmax]`` of the source pixels of the rows of L within a
    ``(2h+1)^2`` window around it (-1 where there are none).

    L is given by its CSR arrays (``n^2`` image pixels, ``ns^2`` source pixels).
    """
    npix = n * n
    l_r = np.empty(l_idx.shape[0], dtype=np.int32)
    l_c = np.empty(l_idx.shape[0], dtype=np.int32)
    # bounding box of each row of L on the source grid (-1 for empty rows) ...
    rmin = np.full(npix, -1, dtype=np.int64)
    rmax = np.full(npix, -1, dtype=np.int64)
    cmin = np.full(npix, -1, dtype=np.int64)
    cmax = np.full(npix, -1, dtype=np.int64)
    for k in nb.prange(npix):
        for p in range(l_ptr[k], l_ptr[k + 1]):
            r = l_idx[p] // ns
            c = l_idx[p] % ns
            l_r[p] = r
            l_c[p] = c
            rmin[k] = r if rmin[k] < 0 else min(rmin[k], r)
            rmax[k] = max(rmax[k], r)
            cmin[k] = c if cmin[k] < 0 else min(cmin[k], c)
            cmax[k] = max(cmax[k], c)
    # ... and over each pixel's window
    rmin = _window_extreme(rmin, n, h, False, -1)
    rmax = _window_extreme(rmax, n, h, True, -1)
    cmin = _window_extreme(cmin, n, h, False, -1)
    cmax = _window_extreme(cmax, n, h, True, -1)
    return l_r, l_c, rmin, rmax, cmin, cmax


@nb.njit(parallel=True, cache=True)
def psf_lens_csr_kernel(n, kernel, l_ptr, l_idx, l_val, ns):
    """CSR arrays of ``F L`` straight from the PSF kernel and the CSR arrays of L (``n^2`` image
    pixels, ``ns^2`` source pixels), without forming F."""
    da, db, tv = _psf_taps(kernel)
    h = (kernel.shape[0] - 1) // 2
    npix = n * n
    l_r, l_c, rmin, rmax, cmin, cmax = windowed_row_boxes(n, h, l_ptr, l_idx, ns)
    counts = np.zeros(npix + 1, dtype=np.int64)
    dummy_c = np.empty(0, dtype=np.int32)
    dummy_v = np.empty(0)
    for i in nb.prange(n):
        box = np.empty(ns * ns)
        for j in range(n):
            k = i * n + j
            if rmax[k] >= 0:
                counts[k + 1] = _blurred_row(i, j, n, da, db, tv, l_ptr, l_r, l_c, l_val, ns, rmin[k], rmax[k],
                                             cmin[k], cmax[k], box, dummy_c, dummy_v, 0, False)
    indptr = np.cumsum(counts)
    indices = np.empty(indptr[npix], dtype=np.int32)
    data = np.empty(indptr[npix])
    for i in nb.prange(n):
        box = np.empty(ns * ns)
        for j in range(n):
            k = i * n + j
            if rmax[k] >= 0:
                _blurred_row(i, j, n, da, db, tv, l_ptr, l_r, l_c, l_val, ns, rmin[k], rmax[k], cmin[k], cmax[k],
                             box, indices, data, indptr[k], True)
    return indptr, indices, data
