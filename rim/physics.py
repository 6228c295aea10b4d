"""Batched forward model and likelihood gradient in torch, with sparse CSR products.

A batch of lenses, each with its own operator ``A_b = F_b L_b``, is applied as
one block-diagonal sparse product with the lensing matrices ``L_b`` (their
transposes are stored too, and autograd's backward of the product is the
exact transpose product, through :func:`lensinv.torch_ops.sparse_apply`),
followed by a per-lens PSF convolution (a grouped ``conv2d``, whose adjoint is
the correlation with the same kernel). Keeping ``F`` as a convolution instead
of forming ``F L`` saves the data pipeline 30-70 ms per lens and lets the GPU
run the blur through cuDNN. Operators already formed (``F L``, e.g. stored in
a data set) are used as they are, without a kernel.

Interferometric lenses (:class:`BatchedVisibilityOperator`) reuse the sparse ``L`` product and
replace the blur by the dirty beam: the gradient of the visibilities' chi^2 is formed from their
dirty image and beam with one zero-padded FFT convolution per lens, so its cost does not grow with
the number of visibilities (docs/visibilities.md, "The RIM on visibilities").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import scipy.fft
import scipy.sparse as sp
import torch

from lensinv.torch_ops import sparse_apply


def _block_diag_csr(mats: Sequence[sp.csr_matrix], device: Any, dtype: torch.dtype) -> torch.Tensor:
    rows, cols = mats[0].shape
    if any(m.shape != (rows, cols) for m in mats):
        raise ValueError("all operators in a batch must have the same shape")
    nnz = np.array([m.nnz for m in mats], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(nnz)])
    crow = np.concatenate([m.indptr[:-1].astype(np.int64) + offsets[b] for b, m in enumerate(mats)] + [offsets[-1:]])
    col = np.concatenate([m.indices.astype(np.int64) + b * cols for b, m in enumerate(mats)])
    val = np.concatenate([m.data for m in mats])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(col),
                                       torch.from_numpy(val).to(dtype), size=(len(mats) * rows, len(mats) * cols),
                                       device=device, check_invariants=False)


#: Kernel sides from which the CPU blur is an FFT product: a grouped conv2d of 8 lenses (192^2, 15^2
#: kernels) took 79 ms on one core, the FFT product 9 ms (measured with torch 2.13)
_FFT_FROM = 11


def _fft_size(n: int, size: int) -> int:
    """The side of the zero-padded FFT for ``n``-pixel images and ``size``-pixel kernels: at least
    ``n + size - 1`` (exact linear convolution) and a product of small primes (192 + 15 - 1 = 206 =
    2 x 103 took 4.1 ms per 4 images forward and back on one core, 210 took 1.9 ms)."""
    return scipy.fft.next_fast_len(n + size - 1, real=True)


def kernel_spectra(kernels: torch.Tensor, n: int, adjoint: bool) -> torch.Tensor:
    """The real-FFT spectra of ``(B, K, K)`` kernels zero-padded to :func:`_fft_size` (flipped for
    the adjoint, the correlation), for :func:`_fft_blur` of ``n x n`` images."""
    m = _fft_size(n, kernels.shape[-1])
    return torch.fft.rfft2(torch.flip(kernels, dims=(1, 2)) if adjoint else kernels, s=(m, m))


def _fft_blur(img: torch.Tensor, kernels: torch.Tensor, adjoint: bool,
              spectra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``convolve2d(img[b], kernels[b], mode="same")`` (the correlation if ``adjoint``) for ``(B, n, n)``
    images and ``(B, K, K)`` odd kernels, by zero-padded real FFTs (exact linear convolution).
    ``spectra``: :func:`kernel_spectra` of the kernels (computed here when None)."""
    n, size = img.shape[-1], kernels.shape[-1]
    if spectra is None:
        spectra = kernel_spectra(kernels, n, adjoint)
    m = _fft_size(n, size)
    full = torch.fft.irfft2(torch.fft.rfft2(img, s=(m, m)) * spectra, s=(m, m))
    h = size // 2
    return full[..., h:h + n, h:h + n]


def _once_each(items: Sequence[Any], convert: Any) -> list:
    """``[convert(x) for x in items]``, converting an object that recurs (the same ``id``) once."""
    done: dict[int, Any] = {}
    for x in items:
        if id(x) not in done:
            done[id(x)] = convert(x)
    return [done[id(x)] for x in items]


@dataclass(frozen=True, eq=False)
class BatchedOperator:
    """Block-diagonal ``A = diag(A_1, ..., A_B)`` of B lens operators on the same grids.

    Attributes
    ----------
    matrix, matrix_t : torch.Tensor
        Sparse CSR of the block-diagonal sparse part and its transpose
        (``L``, or ``F L`` when no kernels are given).
    psf : torch.Tensor or None
        ``(B, K, K)`` PSF kernels applied after ``matrix`` (odd K), or None.
    batch, image_n, source_n : int
    """

    matrix: torch.Tensor
    matrix_t: torch.Tensor
    batch: int
    image_n: int
    source_n: int
    psf: Optional[torch.Tensor] = None
    #: the PSF's FFT spectra for the CPU blur, by (adjoint, dtype): computed on first use, once per operator
    _spectra: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_scipy(cls, mats: Sequence[sp.spmatrix], image_n: int, source_n: int, device: Any = None,
                   dtype: torch.dtype = torch.float32,
                   psfs: Optional[Sequence[Optional[np.ndarray]]] = None) -> "BatchedOperator":
        """From per-lens scipy matrices (``n_img^2 x n_src^2``) and optional PSF kernels.

        Pass ``op.L`` and ``op.psf`` of each lens (the blur then runs as a
        convolution), or ``op.matrix`` and no kernels. Kernels of different
        sizes are zero-padded to the largest; a None kernel is a delta.
        """
        if len(mats) == 0:
            raise ValueError("need at least one operator")
        mats = _once_each(mats, sp.csr_matrix)
        if mats[0].shape != (image_n * image_n, source_n * source_n):
            raise ValueError(f"operators must be {image_n ** 2} x {source_n ** 2}, got {mats[0].shape}")
        for m in mats:
            m.sort_indices()
        kernels = None
        if psfs is not None and any(k is not None for k in psfs):
            if len(psfs) != len(mats):
                raise ValueError(f"got {len(psfs)} PSF kernels for {len(mats)} operators")
            size = max(np.shape(k)[0] for k in psfs if k is not None)
            stack = np.zeros((len(mats), size, size))
            for b, k in enumerate(psfs):
                if k is None:
                    stack[b, size // 2, size // 2] = 1.0
                else:
                    o = (size - np.shape(k)[0]) // 2
                    stack[b, o:o + np.shape(k)[0], o:o + np.shape(k)[0]] = k
            kernels = torch.as_tensor(stack, dtype=dtype, device=device)
        mats_t = _once_each(mats, lambda m: m.T.tocsr())  # a lens repeated in the batch is transposed once
        return cls(_block_diag_csr(mats, device, dtype), _block_diag_csr(mats_t, device, dtype),
                   len(mats), image_n, source_n, kernels)

    def to(self, device: Any) -> "BatchedOperator":
        return BatchedOperator(self.matrix.to(device), self.matrix_t.to(device), self.batch, self.image_n,
                               self.source_n, None if self.psf is None else self.psf.to(device))

    def _blur(self, img: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """Per-lens ``convolve2d(mode="same")`` (or its adjoint, the correlation): a zero-padded FFT
        product on the CPU for kernels of ``_FFT_FROM`` pixels a side or more, else a (grouped) conv2d."""
        k = self.psf.to(img.dtype)
        if img.device.type == "cpu" and k.shape[-1] >= _FFT_FROM:
            key = (adjoint, img.dtype, img.shape[-1])
            if key not in self._spectra:
                self._spectra[key] = kernel_spectra(k, img.shape[-1], adjoint)
            return _fft_blur(img, k, adjoint, self._spectra[key])
        # conv2d correlates: the convolution uses the flipped kernel, the adjoint the kernel itself
        w = (k if adjoint else torch.flip(k, dims=(1, 2)))[:, None]
        if self.batch > 1 and bool((k == k[:1]).all()):
            # one kernel for all (e.g. one lens seen through several symmetries): a plain batched
            # convolution, several times faster on CPU than the grouped one
            return torch.nn.functional.conv2d(img[:, None], w[:1], padding=k.shape[-1] // 2)[:, 0]
        return torch.nn.functional.conv2d(img[None], w, padding=k.shape[-1] // 2, groups=self.batch)[0]

    def _check(self, x: torch.Tensor, n: int, name: str) -> None:
        if tuple(x.shape) != (self.batch, n, n):
            raise ValueError(f"{name} must have shape ({self.batch}, {n}, {n}), got {tuple(x.shape)}")

    def apply(self, source: torch.Tensor) -> torch.Tensor:
        """``A s`` for sources ``(B, n_src, n_src)`` -> images ``(B, n_img, n_img)``; differentiable."""
        self._check(source, self.source_n, "source")
        flat = source.reshape(1, -1).to(self.matrix.dtype)
        out = sparse_apply(flat, self.matrix, self.matrix_t).reshape(self.batch, self.image_n, self.image_n)
        return out if self.psf is None else self._blur(out, adjoint=False)

    def adjoint(self, image: torch.Tensor) -> torch.Tensor:
        """``A^T d`` for images ``(B, n_img, n_img)`` -> ``(B, n_src, n_src)``; differentiable."""
        self._check(image, self.image_n, "image")
        img = image.to(self.matrix.dtype)
        if self.psf is not None:
            img = self._blur(img, adjoint=True)
        return sparse_apply(img.reshape(1, -1), self.matrix_t, self.matrix).reshape(self.batch, self.source_n,
                                                                                     self.source_n)

    def chi2_gradient(self, source: torch.Tensor, image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Gradient of ``chi^2 / 2 = |(A s - d) / sigma|^2 / 2`` with respect to ``s``: ``A^T (A s - d) / sigma^2``.

        ``sigma`` is per lens ``(B,)`` or per pixel ``(B, n_img, n_img)``, > 0.
        """
        self._check(image, self.image_n, "image")
        sig = sigma.to(image.dtype)
        if sig.shape == (self.batch,):
            sig = sig[:, None, None]
        elif tuple(sig.shape) != (self.batch, self.image_n, self.image_n):
            raise ValueError(f"sigma must have shape ({self.batch},) or ({self.batch}, {self.image_n}, "
                             f"{self.image_n}), got {tuple(sig.shape)}")
        return self.adjoint((self.apply(source) - image) / sig**2)



def beam_spectrum(beam: np.ndarray, image_n: int) -> np.ndarray:
    """The real 2-D spectrum of a dirty beam as a ``2n x 2n`` circulant kernel, ``(2n, n + 1)`` float64.

    ``beam`` is ``(2n - 1, 2n - 1)`` on the pixel separations (:meth:`lensinv.UVCoverage.beam`
    layout, ``beam[dy + n - 1, dx + n - 1]``). Separations of ``-(n - 1) .. n - 1`` pixels are distinct
    modulo ``2n``, so the circular convolution of a zero-padded ``n x n`` image with the kernel,
    cropped to ``n x n``, is the exact sum ``sum_l beam(x_j - x_l) x_l``. A dirty beam is even
    (``beam(-d) = beam(d)``), so its spectrum is real; the real part taken here is the spectrum of
    the beam symmetrised, which keeps the convolution exactly self-adjoint.
    """
    n = image_n
    b = np.asarray(beam, dtype=np.float64)
    if b.shape != (2 * n - 1, 2 * n - 1):
        raise ValueError(f"beam must have shape ({2 * n - 1}, {2 * n - 1}) for a {n}x{n} image grid, got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("beam contains NaN or inf values")
    p = 2 * n
    k = np.zeros((p, p))
    idx = np.arange(-(n - 1), n) % p
    k[np.ix_(idx, idx)] = b
    return np.ascontiguousarray(np.fft.rfft2(k).real)


@dataclass(frozen=True, eq=False)
class BatchedVisibilityOperator:
    """B lenses observed by an interferometer, for the RIM: ``chi2_gradient`` from dirty images.

    The likelihood of visibilities ``v`` enters only through the natural-weighted dirty image
    ``D = Re(A^H W v) / sum(W)``, the dirty beam ``B`` (normalised by ``sum(W)``) and
    ``sigma_D = 1 / sqrt(sum(W))`` (:meth:`lensinv.VisibilityOperator.dirty`)::

        grad chi^2 / 2 = L^T pb (B * (pb L s) - D) / sigma_D^2

    ``L`` runs as the block-diagonal sparse product of :class:`BatchedOperator`, ``pb`` (the
    primary beam) as a product, and ``B *`` as a zero-padded FFT convolution (``torch.fft``, on
    the operator's device): the cost per lens depends on the grids, not on the number of
    visibilities.

    Attributes
    ----------
    lensing : BatchedOperator
        The lensing matrices ``L`` (no PSF).
    spectra : torch.Tensor
        ``(K, 2n, n + 1)`` real beam spectra (:func:`beam_spectrum`), ``K`` 1 (one beam shared by the
        batch) or ``batch``.
    primary_beam : torch.Tensor or None
        ``(K', n, n)`` primary-beam responses (``K'`` 1 or ``batch``), or None for 1.
    """

    lensing: BatchedOperator
    spectra: torch.Tensor
    primary_beam: Optional[torch.Tensor] = None

    @property
    def batch(self) -> int:
        return self.lensing.batch

    @property
    def image_n(self) -> int:
        return self.lensing.image_n

    @property
    def source_n(self) -> int:
        return self.lensing.source_n

    @classmethod
    def from_scipy(cls, mats: Sequence[sp.spmatrix], beams: Sequence[np.ndarray], image_n: int, source_n: int,
                   device: Any = None, dtype: torch.dtype = torch.float32,
                   primary_beams: Optional[Sequence[Optional[np.ndarray]]] = None) -> "BatchedVisibilityOperator":
        """From per-lens lensing matrices ``L`` (``n_img^2 x n_src^2``), normalised dirty beams
        (``(2n - 1, 2n - 1)``, :attr:`lensinv.visibility.DirtyImage.beam`) and optional primary beams
        (``(n, n)`` or flat; None for 1). Beams (and primary beams) that are the same array or equal
        are stored once."""
        if len(beams) != len(mats):
            raise ValueError(f"got {len(beams)} beams for {len(mats)} operators")
        lensing = BatchedOperator.from_scipy(mats, image_n, source_n, device=device, dtype=dtype)
        spectra = [beam_spectrum(b, image_n) for b in _distinct(beams)]
        spec = torch.as_tensor(np.stack(spectra), dtype=dtype, device=device)
        pb = None
        if primary_beams is not None and any(p is not None for p in primary_beams):
            if len(primary_beams) != len(mats):
                raise ValueError(f"got {len(primary_beams)} primary beams for {len(mats)} operators")
            ones = np.ones((image_n, image_n))
            maps = [ones if p is None else np.asarray(p, dtype=np.float64).reshape(image_n, image_n)
                    for p in primary_beams]
            pb = torch.as_tensor(np.stack(_distinct(maps)), dtype=dtype, device=device)
        return cls(lensing, spec, pb)

    def to(self, device: Any) -> "BatchedVisibilityOperator":
        return BatchedVisibilityOperator(self.lensing.to(device), self.spectra.to(device),
                                         None if self.primary_beam is None else self.primary_beam.to(device))

    def _pb(self, img: torch.Tensor) -> torch.Tensor:
        return img if self.primary_beam is None else img * self.primary_beam.to(img.dtype)

    def apply(self, source: torch.Tensor) -> torch.Tensor:
        """``pb L s``: sources ``(B, n_src, n_src)`` -> primary-beam-weighted images ``(B, n, n)``."""
        return self._pb(self.lensing.apply(source))

    def adjoint(self, image: torch.Tensor) -> torch.Tensor:
        """``L^T pb d``: images ``(B, n, n)`` -> ``(B, n_src, n_src)``; the transpose of :meth:`apply`."""
        self.lensing._check(image, self.image_n, "image")
        return self.lensing.adjoint(self._pb(image.to(self.lensing.matrix.dtype)))

    def beam_convolve(self, image: torch.Tensor) -> torch.Tensor:
        """``B * x`` for images ``(B, n, n)``: the dirty-beam convolution (self-adjoint)."""
        self.lensing._check(image, self.image_n, "image")
        n, p = self.image_n, 2 * self.image_n
        spec = torch.fft.rfft2(image.to(self.spectra.dtype), s=(p, p))
        return torch.fft.irfft2(spec * self.spectra, s=(p, p))[:, :n, :n]

    def chi2_gradient(self, source: torch.Tensor, dirty: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Gradient of the visibilities' ``chi^2 / 2`` with respect to ``s``: ``L^T pb (B * (pb L s) - D) / sigma_D^2``.

        ``dirty`` is ``(B, n, n)`` (:attr:`lensinv.visibility.DirtyImage.image`), ``sigma`` ``(B,)``
        (:attr:`~lensinv.visibility.DirtyImage.sigma`, > 0).
        """
        self.lensing._check(dirty, self.image_n, "dirty")
        sig = sigma.to(dirty.dtype)
        if tuple(sig.shape) != (self.batch,):
            raise ValueError(f"sigma must have shape ({self.batch},) (the dirty images' noise, one per lens), "
                             f"got {tuple(sig.shape)}")
        resid = self.beam_convolve(self.apply(source)) - dirty.to(self.spectra.dtype)
        return self.adjoint(resid / sig[:, None, None] ** 2)


def _distinct(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` themselves, or ``[arrays[0]]`` when all are the same (one shared copy)."""
    first = arrays[0]
    if all(a is first or np.array_equal(a, first) for a in arrays[1:]):
        return [first]
    return list(arrays)
