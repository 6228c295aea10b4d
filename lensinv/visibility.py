"""The interferometric observation operator: source pixels -> complex visibilities.

The model visibilities of a source ``s`` (DESIGN.md, "Observation operators") are

    V_k = sum_j pb_j (L s)_j exp(-2 pi i (u_k x_j + v_k y_j)),

``L`` the lensing matrix of :func:`lensinv.lensing_matrix`, ``pb`` an optional primary beam on the
image grid, ``x_j, y_j`` the image-pixel centres in radians and ``(u_k, v_k)`` the baselines in
wavelengths: an image in Jy/pixel gives visibilities in Jy. The sum over pixels is a non-uniform
FFT (finufft, type 2 forwards, type 1 for the adjoint) at a requested precision ``eps`` (default
1e-12, so it agrees with a direct DFT to ~1e-12 relative).

Solvers get the normal matrix ``Re(M^H W M)`` without forming ``M``: with ``A`` the DFT,
``Re(A^H W A)_jl = beam(x_j - x_l, y_j - y_l)`` where ``beam(dx, dy) = sum_k w_k cos(2 pi (u_k dx +
v_k dy))`` is the natural-weighted dirty beam on the ``(2n - 1)^2`` pixel separations (one type-1
NUFFT of the weights, kept on the :class:`UVCoverage` so every lens observed with that coverage and
those weights reuses it), and ``P = L^T diag(pb) B diag(pb) L`` is summed in the image plane by
Numba kernels. Its per-lens cost depends on the image and source grids and the lens, not on the
number of visibilities.

finufft is an optional dependency (``pip install lensinv[radio]``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp

from . import _visibility_kernels as _vk
from .validate import int_at_least, pixel_array, positive_float
from .grids import ImageGrid, SourceGrid
from .mass import Lens
from .operator import DEFAULT_SUPERSAMPLE, lensing_matrix

log = logging.getLogger(__name__)

ARCSEC = math.pi / 648000.0
"""One arcsecond in radians."""

DEFAULT_EPS = 1e-12
"""finufft's requested relative precision for the visibility operator."""

_BATCH = 512  # image pixels per batch of rows of B L (buffer: batch x unknowns doubles)


def _finufft() -> Any:
    try:
        import finufft
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the visibility operator needs finufft: pip install finufft "
                          "(or pip install 'lensinv[radio]')") from exc
    return finufft


def check_uv(uv: Any, name: str = "uv") -> np.ndarray:
    """Validate baselines: a finite real ``(n_vis, 2)`` array (wavelengths), returned as float64."""
    raw = np.asarray(uv)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real array of (u, v) in wavelengths, got dtype {raw.dtype}")
    arr = raw.astype(np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n_vis, 2) with n_vis >= 1, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def _wrapped(t: np.ndarray) -> np.ndarray:
    """Angles folded into [-pi, pi) (integer Fourier modes are 2 pi periodic)."""
    return np.mod(t + math.pi, 2.0 * math.pi) - math.pi


@dataclass(frozen=True, eq=False)
class UVCoverage:
    """Baselines of an observation, with their dirty beams cached.

    Parameters
    ----------
    uv : ndarray
        ``(n_vis, 2)`` baselines ``(u, v)`` in wavelengths (finite).

    Notes
    -----
    :meth:`beam` keeps the last few natural-weighted dirty beams it computed, keyed by the image
    grid, the precision and the weights (compared by value), so inverting many lenses observed
    with one coverage and one noise model computes the beam once. Share one ``UVCoverage``
    between operators (pass it as ``uv``) to share the cache.
    """

    uv: np.ndarray
    _cache: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        arr = check_uv(self.uv)
        arr.flags.writeable = False
        object.__setattr__(self, "uv", arr)

    @property
    def n_vis(self) -> int:
        """Number of visibilities."""
        return int(self.uv.shape[0])

    @property
    def u(self) -> np.ndarray:
        """u (wavelengths)."""
        return self.uv[:, 0]

    @property
    def v(self) -> np.ndarray:
        """v (wavelengths)."""
        return self.uv[:, 1]

    def beam(self, weights: np.ndarray, image_grid: ImageGrid, eps: float = DEFAULT_EPS) -> np.ndarray:
        """The natural-weighted dirty beam on the image grid's pixel separations.

        Parameters
        ----------
        weights : ndarray
            ``(n_vis,)`` non-negative weights (``1/sigma^2`` per real and imaginary part, in 1/Jy^2
            or normalised units; 0 leaves a visibility out).
        image_grid : ImageGrid
        eps : float
            finufft precision.

        Returns
        -------
        ndarray
            ``(2n - 1, 2n - 1)``: ``beam[dy + n - 1, dx + n - 1] = sum_k w_k cos(2 pi (u_k dx + v_k dy)
            delta)`` for separations of ``dx`` columns and ``dy`` rows, ``delta`` the pixel size in
            radians (units of the weights). Read-only; cached (see the class notes).
        """
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (self.n_vis,):
            raise ValueError(f"weights must have {self.n_vis} elements (one per visibility), got {w.size}")
        key = (image_grid.n, image_grid.pixel_scale, float(eps))
        total = float(w.sum())
        for k, w_seen, tot, beam in self._cache:
            if k == key and tot == total and np.array_equal(w_seen, w):
                return beam
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0")
        t0 = time.perf_counter()
        beam = _dirty_beam(self.uv, w, image_grid, eps)
        beam.flags.writeable = False
        log.debug("dirty beam of %d visibilities on %d^2 separations: %.3f s", self.n_vis, 2 * image_grid.n - 1,
                  time.perf_counter() - t0)
        w_copy = w.copy()
        w_copy.flags.writeable = False
        self._cache.append((key, w_copy, total, beam))
        del self._cache[:-2]  # the last two (e.g. all data, and a masked subset)
        return beam


def _dirty_beam(uv: np.ndarray, w: np.ndarray, image_grid: ImageGrid, eps: float) -> np.ndarray:
    finufft = _finufft()
    n = image_grid.n
    used = w > 0
    if not used.all():
        uv, w = uv[used], w[used]
    if w.size == 0:
        return np.zeros((2 * n - 1, 2 * n - 1))
    d = image_grid.pixel_scale * ARCSEC
    rows = _wrapped(2.0 * math.pi * d * uv[:, 1])
    cols = _wrapped(2.0 * math.pi * d * uv[:, 0])
    g = finufft.nufft2d1(rows, cols, w.astype(np.complex128), n_modes=(2 * n - 1, 2 * n - 1), isign=1, eps=eps)
    return np.ascontiguousarray(g.real)


@dataclass(frozen=True, eq=False)
class DirtyImage:
    """The natural-weighted dirty image and beam of some visibilities: what the likelihood of a
    source needs of them, whatever their number.

    With ``W = diag(1 / sigma_k^2)`` and ``A`` the image-plane DFT of the operator,
    ``chi^2(s) / 2 = |W^(1/2) (A pb L s - v)|^2 / 2`` has the gradient

        L^T pb (B * (pb L s) - image) / sigma^2,

    ``B *`` the convolution with :attr:`beam` (``(B * x)_j = sum_l beam(x_j - x_l) x_l``), so the
    dirty image, the beam and ``sigma`` replace the visibilities (the imaging gradient
    ``L^T F^T (F L s - d) / sigma^2`` with ``F^T F`` become ``B``).

    Attributes
    ----------
    image : ndarray
        ``(n, n)`` ``Re(A^H W v) / sum(W)`` on the image grid, in the visibilities' unit (Jy/beam
        for Jy): the usual (apparent, not primary-beam corrected) natural-weighted dirty image.
    beam : ndarray
        ``(2n - 1, 2n - 1)`` the dirty beam on the pixel separations divided by ``sum(W)``
        (dimensionless, 1 at zero separation; layout of :meth:`UVCoverage.beam`). Read-only.
    sigma : float
        ``1 / sqrt(sum(W))``: the noise standard deviation of each pixel of :attr:`image` (the
        visibilities' unit).
    """

    image: np.ndarray
    beam: np.ndarray
    sigma: float


@dataclass(frozen=True, eq=False)
class VisibilityOperator:
    """The forward model of one lens observed by an interferometer, ``V = A diag(pb) L s``.

    Follows the observation-operator protocol (:class:`lensinv.ObservationOperator`) with
    ``normal_matrix`` instead of ``matrix`` (the dense ``n_vis x n_src^2`` complex matrix is what it
    avoids).

    Attributes
    ----------
    L : scipy.sparse.csr_matrix
        Lensing matrix, ``n_img^2 x n_src^2``.
    coverage : UVCoverage
        Baselines (wavelengths) and the cached dirty beams.
    image_grid, source_grid : ImageGrid, SourceGrid
    lens : Lens
    supersample : int
    primary_beam : ndarray or None
        Flat ``n_img^2`` primary-beam response (dimensionless, >= 0), or None for 1.
    eps : float
        finufft precision.
    dtype : numpy.dtype
        ``complex128``: the model data are complex.
    """

    L: sp.csr_matrix
    coverage: UVCoverage
    image_grid: ImageGrid
    source_grid: SourceGrid
    lens: Lens
    supersample: int
    primary_beam: Optional[np.ndarray] = None
    eps: float = DEFAULT_EPS
    dtype: np.dtype = field(default=np.dtype(np.complex128), init=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_vis, n_src^2)``."""
        return (self.coverage.n_vis, self.source_grid.size)

    @property
    def uv(self) -> np.ndarray:
        """``(n_vis, 2)`` baselines in wavelengths."""
        return self.coverage.uv

    # -- the image-plane Fourier transform ---------------------------------------------------
    def _nufft_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.image_grid.pixel_scale * ARCSEC
        uv = self.coverage.uv
        n = self.image_grid.n
        h = n // 2 - (n - 1) / 2.0  # pixel centres sit at (k + h) delta for finufft's modes k
        phase = np.exp(-2j * math.pi * h * d * (uv[:, 0] + uv[:, 1]))
        return _wrapped(2.0 * math.pi * d * uv[:, 1]), _wrapped(2.0 * math.pi * d * uv[:, 0]), phase

    def fourier(self, image: np.ndarray) -> np.ndarray:
        """Visibilities (Jy) of an image (Jy/pixel, ``(n, n)`` or flat), without the primary beam:
        ``sum_j I_j exp(-2 pi i (u x_j + v y_j))``."""
        n = self.image_grid.n
        img = np.asarray(image, dtype=np.float64).reshape(n, n)
        rows, cols, phase = self._nufft_args()
        out = _finufft().nufft2d2(rows, cols, img.astype(np.complex128), isign=-1, eps=self.eps)
        return out * phase

    def fourier_adjoint(self, vis: np.ndarray) -> np.ndarray:
        """``Re(A^H vis)`` on the image grid, ``(n, n)``: the adjoint of :meth:`fourier` for the real
        inner product (a dirty image, unnormalised, when ``vis`` is weighted data)."""
        n = self.image_grid.n
        d = np.asarray(vis).reshape(-1)
        rows, cols, phase = self._nufft_args()
        g = _finufft().nufft2d1(rows, cols, (d * np.conj(phase)).astype(np.complex128), n_modes=(n, n), isign=1,
                                eps=self.eps)
        return np.ascontiguousarray(g.real)

    # -- the protocol --------------------------------------------------------------------------
    def image(self, source: np.ndarray) -> np.ndarray:
        """The lensed, primary-beam-weighted image ``pb L s`` (Jy/pixel), flat."""

        flat, _ = pixel_array("source", source, self.source_grid.n)
        img = self.L @ flat
        return img if self.primary_beam is None else img * self.primary_beam

    def apply(self, source: np.ndarray) -> np.ndarray:
        """Model visibilities (Jy, complex ``(n_vis,)``) of a source (Jy/pixel; flat or 2-D)."""
        return self.fourier(self.image(source))

    def adjoint(self, vis: np.ndarray) -> np.ndarray:
        """``L^T pb Re(A^H vis)``: the exact transpose for the real inner product; flat source."""
        d = np.asarray(vis)
        if d.size != self.coverage.n_vis:
            raise ValueError(f"vis must have {self.coverage.n_vis} elements (one per visibility), got shape {d.shape}")
        img = self.fourier_adjoint(d).reshape(-1)
        if self.primary_beam is not None:
            img = img * self.primary_beam
        return self.L.T @ img

    def dirty_image(self, vis: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """The natural-weighted dirty image ``pb Re(A^H W vis) / sum(W)`` (Jy/beam-like units),
        ``(n, n)``; ``weights`` default 1."""
        d = np.asarray(vis).reshape(-1)
        w = np.ones(d.size) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        img = self.fourier_adjoint(w * d) / max(float(w.sum()), np.finfo(float).tiny)
        if self.primary_beam is not None:
            img = img * self.primary_beam.reshape(img.shape)
        return img

    def dirty(self, vis: np.ndarray, sigma: Union[float, np.ndarray]) -> DirtyImage:
        """The natural-weighted dirty image and beam of ``vis`` (see :class:`DirtyImage`).

        Parameters
        ----------
        vis : ndarray
            ``(n_vis,)`` visibilities (Jy; complex, or real for zero imaginary parts), finite.
        sigma : float or ndarray
            Noise per real and per imaginary part (Jy): a scalar or one per visibility; finite, > 0.

        Returns
        -------
        DirtyImage
            Equivariant to the data's unit: ``vis`` and ``sigma`` times ``c`` give the image and
            ``sigma`` times ``c`` and the same beam. The beam comes from :meth:`UVCoverage.beam`
            with the weights relative to the median ``sigma`` (uniform noise: weights 1), so lenses
            observed with one coverage share one cached beam.

        Raises
        ------
        ValueError
            ``vis`` has the wrong size or non-finite values; ``sigma`` is not finite and > 0 or
            has the wrong shape.
        """
        n_vis = self.coverage.n_vis
        d = np.asarray(vis)
        if d.dtype.kind not in "biufc":
            raise ValueError(f"vis must be an array of numbers, got dtype {d.dtype}")
        d = d.reshape(-1)
        if d.size != n_vis:
            raise ValueError(f"vis must have {n_vis} elements (one per visibility), got shape {np.shape(vis)}")
        if not np.all(np.isfinite(d)):
            raise ValueError("vis contains NaN or inf values")
        try:
            sig = np.asarray(sigma, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"sigma must be a finite scalar or one value per visibility, > 0; got {sigma!r}") from None
        if sig.shape not in ((), (n_vis,)):
            raise ValueError(f"sigma must be a scalar or have {n_vis} elements (one per visibility), got {sig.shape}")
        if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError("sigma must be finite and > 0 (per real and imaginary part)")
        ref = float(np.median(sig))
        w = np.ones(n_vis) if sig.ndim == 0 else (ref / sig) ** 2
        total = float(w.sum())
        beam = self.coverage.beam(w, self.image_grid, self.eps) / total
        beam.flags.writeable = False
        image = self.fourier_adjoint(w * d) / total
        return DirtyImage(image=image, beam=beam, sigma=ref / math.sqrt(total))

    def normal_matrix(self, weights: np.ndarray, unknowns: Optional[np.ndarray] = None,
                      dense: bool = True) -> Union[np.ndarray, sp.csr_matrix]:
        """``Re(M^H diag(w) M)`` over the source pixels ``unknowns``, ``M = A diag(pb) L``.

        Parameters
        ----------
        weights : ndarray
            ``(n_vis,)`` non-negative weights (``1/sigma^2``, sigma per real and imaginary part;
            0 leaves a visibility out).
        unknowns : ndarray of int, optional
            Sorted flat source-pixel indices (default: all; pixels no ray reaches give zero rows).
        dense : bool
            True: a C-ordered symmetric dense array (both triangles filled). False: the same as a
            CSR matrix (the beam couples every pair of pixels, so it is dense anyway).

        Notes
        -----
        Computed as ``L'^T B L'`` with ``L' = diag(pb) L`` and ``B`` the dirty beam between image
        pixels (:meth:`UVCoverage.beam`, cached): about ``n_r nnz(L) / 2 + n_r nnz_row n_u`` operations
        for ``n_r`` reached image pixels and ``n_u`` unknowns, whatever the number of visibilities.
        """
        n_src2 = self.source_grid.size
        beam = self.coverage.beam(weights, self.image_grid, self.eps)
        if unknowns is None:
            idx = None
        else:
            idx = np.asarray(unknowns, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n_src2 or np.any(np.diff(idx) <= 0)):
                raise ValueError(f"unknowns must be sorted, distinct source-pixel indices in [0, {n_src2})")
        P = _normal_matrix(self.L, self.primary_beam, beam, self.image_grid.n, idx)
        return P if dense else sp.csr_matrix(P)


def _normal_matrix(L: sp.csr_matrix, pb: Optional[np.ndarray], beam: np.ndarray, n: int,
                   idx: Optional[np.ndarray]) -> np.ndarray:
    """``L'^T B L'`` (see :meth:`VisibilityOperator.normal_matrix`); ``idx=None``: all columns."""
    t0 = time.perf_counter()
    n_src2 = L.shape[1]
    Lw = L if pb is None else sp.csr_matrix(sp.diags(pb) @ L)
    Lw.eliminate_zeros()
    rows = np.flatnonzero(np.diff(Lw.indptr))  # reached image pixels
    LR = Lw[rows]
    if idx is None:
        cols = np.flatnonzero(np.bincount(LR.indices, minlength=n_src2))  # reached columns
    else:
        cols = idx
    LR = sp.csr_matrix(LR[:, cols])
    LR.sort_indices()
    n_u = cols.size
    Q = np.zeros((n_u, n_u))
    if LR.nnz:
        LC = LR.tocsc()
        LC.sort_indices()
        r_i = (rows // n).astype(np.int64)
        c_i = (rows % n).astype(np.int64)
        ptr, col, val = LR.indptr.astype(np.int64), LR.indices.astype(np.int64), LR.data
        cptr, crow, cval = LC.indptr.astype(np.int64), LC.indices.astype(np.int64), LC.data
        cursor = cptr[:-1].copy()
        buf = np.empty((min(_BATCH, rows.size), n_u))
        for r0 in range(0, rows.size, buf.shape[0]):
            _vk.beam_rows(buf, r0, r_i, c_i, ptr, col, val, beam, n - 1)
            _vk.fold_rows(Q, buf, r0, cptr, crow, cval, cursor)
        _vk.symmetrise(Q)
    log.debug("visibility normal matrix: %d reached image pixels, %d unknowns, %.3f s", rows.size, n_u,
              time.perf_counter() - t0)
    if idx is not None or n_u == n_src2:
        return Q
    out = np.zeros((n_src2, n_src2))
    out[np.ix_(cols, cols)] = Q
    return out


def _primary_beam(primary_beam: Any, image_grid: ImageGrid) -> Optional[np.ndarray]:
    if primary_beam is None:
        return None
    raw = np.asarray(primary_beam)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"primary_beam must be a real array, got dtype {raw.dtype}")
    pb = raw.astype(np.float64)
    n = image_grid.n
    if pb.shape not in ((n, n), (n * n,)):
        raise ValueError(f"primary_beam must have shape ({n}, {n}) or ({n * n},), got {pb.shape}")
    pb = pb.reshape(-1).copy()
    if not np.all(np.isfinite(pb)) or np.any(pb < 0):
        raise ValueError("primary_beam must be finite and >= 0")
    pb.flags.writeable = False
    return pb


def visibility_operator(lens: Lens, uv: Union[np.ndarray, UVCoverage], image_grid: ImageGrid = ImageGrid(),
                        source_grid: SourceGrid = SourceGrid(), supersample: int = DEFAULT_SUPERSAMPLE,
                        primary_beam: Optional[np.ndarray] = None, eps: float = DEFAULT_EPS) -> VisibilityOperator:
    """Build the visibility operator of a lens.

    Parameters
    ----------
    lens : Lens
        Mass model (arcsec).
    uv : ndarray or UVCoverage
        ``(n_vis, 2)`` baselines ``(u, v)`` in wavelengths; a :class:`UVCoverage` shares its cached
        dirty beams with every operator built on it.
    image_grid : ImageGrid
        The image-plane grid the lensed source is sampled on (arcsec); it should be at least
        Nyquist-sampled for the longest baseline (``pixel_scale < 1 / (2 |u|_max)`` in radians).
    source_grid : SourceGrid
    supersample : int
        Sub-pixels per image-pixel side for the ray tracing (>= 1).
    primary_beam : ndarray, optional
        Primary-beam response on the image grid (``(n, n)`` or flat, dimensionless, >= 0); None
        means 1 everywhere. :func:`lensinv.uv.gaussian_primary_beam` makes one.
    eps : float
        finufft's requested precision (default 1e-12; in (1e-15, 1e-1)).

    Returns
    -------
    VisibilityOperator
        ``apply(s)`` gives ``V_k = sum_j pb_j (L s)_j exp(-2 pi i (u_k x_j + v_k y_j))`` (Jy for a
        source in Jy/pixel; ``x_j, y_j`` the pixel centres in radians); sigma is per real and per
        imaginary part.

    Examples
    --------
    >>> import numpy as np, lensinv
    >>> uv = np.random.default_rng(0).normal(0, 2e5, (1000, 2))
    >>> op = lensinv.visibility_operator(lensinv.Lens(lensinv.SIE(1.0)), uv)  # doctest: +SKIP
    >>> op.shape  # doctest: +SKIP
    (1000, 4096)
    """
    if not isinstance(lens, Lens):
        raise ValueError(f"lens must be a lensinv.Lens, got {type(lens).__name__}")
    if not isinstance(image_grid, ImageGrid):
        raise ValueError(f"image_grid must be an ImageGrid, got {type(image_grid).__name__}")
    if not isinstance(source_grid, SourceGrid):
        raise ValueError(f"source_grid must be a SourceGrid, got {type(source_grid).__name__}")
    coverage = uv if isinstance(uv, UVCoverage) else UVCoverage(check_uv(uv))
    ss = int_at_least("supersample", supersample, 1)
    eps = positive_float("eps", eps)
    if not 1e-15 <= eps < 0.1:
        raise ValueError(f"eps must be in [1e-15, 0.1), got {eps!r}")
    _finufft()
    pb = _primary_beam(primary_beam, image_grid)
    umax = float(np.abs(coverage.uv).max())
    if umax * image_grid.pixel_scale * ARCSEC > 0.5:
        log.warning("the longest baseline (%.3g wavelengths) is beyond the image grid's Nyquist limit "
                    "(%.3g): the model aliases", umax, 0.5 / (image_grid.pixel_scale * ARCSEC))
    L = lensing_matrix(lens, image_grid, source_grid, ss)
    return VisibilityOperator(L=L, coverage=coverage, image_grid=image_grid, source_grid=source_grid, lens=lens,
                              supersample=ss, primary_beam=pb, eps=eps)
