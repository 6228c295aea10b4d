"""The explicit sparse forward model ``d = F L s``.

``L`` (``n_img^2 x n_src^2``) maps source pixels to image pixels by ray
tracing with sub-pixel sampling and bilinear interpolation; ``F``
(``n_img^2 x n_img^2``) convolves with the PSF. Both are built by Numba
kernels straight into CSR arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import scipy.sparse as sp
from scipy.signal import fftconvolve

from . import _kernels
from .validate import int_at_least, pixel_array
from .grids import ImageGrid, SourceGrid
from .mass import Lens
from .psf import validate_kernel

if TYPE_CHECKING:  # torch is imported lazily: the physics does not need it
    import torch

    from .torch_ops import TorchOperator

log = logging.getLogger(__name__)

DEFAULT_SUPERSAMPLE = 4
#: Largest sub-pixel count per image-pixel side (64^2 = 4096 rays per pixel).
MAX_SUPERSAMPLE = 64


def _supersample(value: int) -> int:
    ss = int_at_least("supersample", value, 1)
    if ss > MAX_SUPERSAMPLE:
        raise ValueError(f"supersample must be at most {MAX_SUPERSAMPLE} (sub-pixels per side), got {value!r}")
    return ss


def lensing_matrix(lens: Lens, image_grid: ImageGrid, source_grid: SourceGrid,
                   supersample: int = DEFAULT_SUPERSAMPLE) -> sp.csr_matrix:
    """The lensing matrix L as a float64 CSR matrix (sorted indices, no duplicates).

    Parameters
    ----------
    lens : Lens
        The mass model.
    image_grid, source_grid : ImageGrid, SourceGrid
        Pixel grids (arcsec).
    supersample : int
        Sub-pixels per image-pixel side (>= 1).
    """
    if not isinstance(lens, Lens):
        raise ValueError(f"lens must be a lensinv.Lens, got {type(lens).__name__}")
    ss = _supersample(supersample)
    arrays = _lensing_kernel(image_grid.n, image_grid.delta, source_grid.n, source_grid.delta, ss,
                             *lens.kernel_args)
    L = _csr(arrays, (image_grid.size, source_grid.size))
    if L.nnz == 0:
        raise ValueError(f"no ray from the image grid ({image_grid.n} x {image_grid.pixel_scale:g} arcsec) lands on the "
                         f"source grid ({source_grid.fov:g} arcsec across) through {lens!r}: the operator would map "
                         "nothing; check the lens parameters (arcsec) or enlarge the source grid")
    return L


_ENTRY_POINTS: dict = {}


def _lensing_kernel(n_img: int, d_img: float, n_src: int, d_src: float, ss: int, fns: tuple, params: np.ndarray):
    """``_kernels.lensing_csr_kernel`` through its compiled entry point, cached by the number of
    components: Numba's dispatcher would type the tuple of profile kernels on every call (~0.1 ms)."""
    key = (len(fns), params.flags.writeable)
    entry = _ENTRY_POINTS.get(key)
    args = (int(n_img), float(d_img), int(n_src), float(d_src), int(ss), fns, params)
    if entry is None:
        out = _kernels.lensing_csr_kernel(*args)  # compiles (or loads from the cache) for this signature
        import numba

        _ENTRY_POINTS[key] = _kernels.lensing_csr_kernel.overloads[tuple(numba.typeof(a) for a in args)].entry_point
        return out
    return entry(*args)


def psf_matrix(kernel: np.ndarray, image_grid: ImageGrid) -> sp.csr_matrix:
    """The PSF matrix F: ``F @ img.ravel() == convolve2d(img, k, mode="same").ravel()``.

    The kernel is validated and normalised to sum 1 first.
    """
    k = validate_kernel(kernel)
    return _csr(_kernels.psf_csr_kernel(image_grid.n, k), (image_grid.size, image_grid.size))


def _csr(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
    """Wrap kernel-made CSR arrays (sorted, duplicate-free) without copies where possible."""
    indptr, indices, data = arrays
    if indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    else:
        indices = indices.astype(np.int64)
    m = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    m.has_canonical_format = True
    return m


@dataclass(frozen=True, eq=False)
class LensOperator:
    """The forward model of one lens observation, ``d = F L s``.

    Attributes
    ----------
    L : scipy.sparse.csr_matrix
        Lensing matrix, ``n_img^2 x n_src^2``, float64.
    F : scipy.sparse.csr_matrix or None
        PSF matrix, ``n_img^2 x n_img^2``, or None without a PSF.
    matrix : scipy.sparse.csr_matrix
        ``F @ L`` (or ``L``).
    image_grid, source_grid : ImageGrid, SourceGrid
    lens : Lens
    psf : ndarray or None
        The normalised PSF kernel.
    supersample : int

    Notes
    -----
    ``F``, ``matrix`` and ``matrix_t`` are formed on first access and then
    kept. :meth:`apply` and :meth:`adjoint` never use them: they apply ``L``
    and blur with an FFT convolution of the same kernel (the same linear map
    up to rounding, about 1e-16 relative), which is cheaper than the product
    with ``F L`` and gives the same bits whether or not ``matrix`` was formed.
    It follows the observation-operator protocol
    (:class:`lensinv.ObservationOperator`), including ``normal_matrix``.
    """

    L: sp.csr_matrix
    image_grid: ImageGrid
    source_grid: SourceGrid
    lens: Lens
    psf: Optional[np.ndarray]
    supersample: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_img^2, n_src^2)``."""
        return self.L.shape

    @cached_property
    def F(self) -> Optional[sp.csr_matrix]:
        return None if self.psf is None else psf_matrix(self.psf, self.image_grid)

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        if self.psf is None:
            return self.L
        L = self.L
        return _csr(_kernels.psf_lens_csr_kernel(self.image_grid.n, self.psf, L.indptr, L.indices, L.data,
                                                 self.source_grid.n), L.shape)

    @cached_property
    def matrix_t(self) -> sp.csr_matrix:
        """``matrix.T`` as CSR (computed once, then kept)."""
        return self.matrix.T.tocsr()

    def _blur(self, flat: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        img = flat.reshape(self.image_grid.shape)
        return fftconvolve(img, kernel, mode="same").reshape(-1)

    def apply(self, source: np.ndarray) -> np.ndarray:
        """Image ``F L s`` of a source (surface brightness in the source's units).

        ``source`` is flat (``n_src^2``) or 2-D (``n_src x n_src``); the result
        has the same layout on the image grid.
        """
        flat, was_2d = pixel_array("source", source, self.source_grid.n)
        out = self.L @ flat
        if self.psf is not None:
            out = self._blur(out, self.psf)
        return out.reshape(self.image_grid.shape) if was_2d else out

    def adjoint(self, image: np.ndarray) -> np.ndarray:
        """Exact transpose product ``(F L)^T d``; flat or 2-D as given."""
        flat, was_2d = pixel_array("image", image, self.image_grid.n)
        if self.psf is not None:  # F^T is the convolution with the flipped kernel
            flat = self._blur(flat, self.psf[::-1, ::-1])
        out = self.L.T @ flat
        return out.reshape(self.source_grid.shape) if was_2d else out

    def normal_matrix(self, weights: np.ndarray, unknowns: Optional[np.ndarray] = None,
                      dense: bool = True) -> "np.ndarray | sp.csr_matrix":
        """``(F L)^T diag(w) (F L)`` restricted to the source pixels ``unknowns``.

        Parameters
        ----------
        weights : ndarray
            ``(n_img^2,)`` or ``(n_img, n_img)`` non-negative weights per image pixel (``1/sigma^2``
            in inverse squared image units; 0 leaves a pixel out, e.g. masked).
        unknowns : ndarray of int, optional
            Sorted flat source-pixel indices (default: all).
        dense : bool
            True: a C-ordered dense array whose upper triangle (``j >= i``) holds the matrix (strict
            lower triangle zero); with a PSF it is formed as ``L^T (F^T W F) L`` without ever forming
            ``F L``. False: a symmetric CSR matrix (from ``matrix``).
        """
        from .normal import lens_psf_normal_matrix, sparse_normal_matrix

        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if dense and self.psf is not None:
            return lens_psf_normal_matrix(self.L, self.psf, self.image_grid.n, self.source_grid.n, w, unknowns)
        return sparse_normal_matrix(self.matrix, w, unknowns, dense=dense)

    def to_torch(self, device: Any = None, dtype: "Optional[torch.dtype]" = None) -> "TorchOperator":
        """The operator as torch sparse CSR tensors (``matrix`` and its transpose).

        Parameters
        ----------
        device : torch.device or str, optional
        dtype : torch.dtype, optional
            Default ``torch.float32``.
        """
        from .torch_ops import TorchOperator

        return TorchOperator.from_scipy(self.matrix, self.image_grid.n, self.source_grid.n,
                                        device=device, dtype=dtype, matrix_t=self.matrix_t)


def operator(lens: Lens, image_grid: ImageGrid = ImageGrid(), source_grid: SourceGrid = SourceGrid(),
             psf: Optional[np.ndarray] = None, supersample: int = DEFAULT_SUPERSAMPLE) -> LensOperator:
    """Build the sparse forward operator of a lens.

    Parameters
    ----------
    lens : Lens
        Mass model (arcsec).
    image_grid : ImageGrid
        Observation grid; default 192 x 192 pixels of 0.04 arcsec.
    source_grid : SourceGrid
        Source grid; default 64 x 64 pixels over 1.5 arcsec.
    psf : ndarray, optional
        PSF kernel sampled on the image pixels (odd square, non-negative);
        normalised to sum 1. None means no blurring.
    supersample : int
        Sub-pixels per image-pixel side for the ray tracing (>= 1).

    Returns
    -------
    LensOperator

    Examples
    --------
    >>> import lensinv
    >>> lens = lensinv.Lens(lensinv.SIE(theta_E=1.0, q=0.8))
    >>> op = lensinv.operator(lens)
    >>> op.shape
    (36864, 4096)
    """
    if not isinstance(image_grid, ImageGrid):
        raise ValueError(f"image_grid must be an ImageGrid, got {type(image_grid).__name__}")
    if not isinstance(source_grid, SourceGrid):
        raise ValueError(f"source_grid must be a SourceGrid, got {type(source_grid).__name__}")
    ss = _supersample(supersample)
    L = lensing_matrix(lens, image_grid, source_grid, ss)
    if psf is None:
        return LensOperator(L=L, image_grid=image_grid, source_grid=source_grid, lens=lens, psf=None, supersample=ss)
    kernel = validate_kernel(psf)
    return LensOperator(L=L, image_grid=image_grid, source_grid=source_grid, lens=lens, psf=kernel, supersample=ss)
