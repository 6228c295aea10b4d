"""The Recurrent Inference Machine (Putzky & Welling 2017) of the MagNet paper, with ConvGRU cells.

Each of ``steps`` iterations stacks the current source estimate and the
likelihood gradient, embeds them with a 5x5 convolution (32 channels,
linear), runs a ConvGRU (5x5, 128 channels), a transposed convolution back to
32 channels (linear), a second ConvGRU (5x5), and a final 5x5 convolution to
one channel that is added to the estimate.

Choices where the seed is silent (all configurable in :class:`RIMConfig`):

- Putzky's layout: the embedding convolution has stride 2 (64 -> 32 pixels)
  and the transposed convolution upsamples back, so the 128-channel GRU runs
  at half resolution (``downsample=True``).
- The second GRU has 32 channels (``hidden2``).
- The gradient fed to the network is ``A^T (A s - d) / sigma^2`` divided by
  its root-mean-square over each lens's source grid: its scale varies by
  ~400x over S/N 10-200, and the normalisation lets one network serve all.
- The gradient is an input, not differentiated through (``s`` is detached
  when it is computed), as in Putzky's code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from .physics import BatchedOperator
from .symmetry import Symmetry, SymmetrisedOperator, symmetries

log = logging.getLogger(__name__)

#: Symmetries :meth:`RIM.reconstruct` averages over by default (see there for the trade of time and error).
DEFAULT_TRANSFORMS = 2

@dataclass(frozen=True)
class RIMConfig:
    """Architecture of the RIM.

    Parameters
    ----------
    steps : int
        Unrolled iterations T.
    embed : int
        Channels of the embedding and of the transposed convolution.
    hidden1, hidden2 : int
        Channels of the first and second ConvGRU.
    kernel : int
        Convolution size (odd).
    downsample : bool
        Stride-2 embedding with the first GRU at half resolution.
    source_n, image_n : int
        Grid sides (the source grid must be even when downsampling).
    """

    steps: int = 10
    embed: int = 32
    hidden1: int = 128
    hidden2: int = 32
    kernel: int = 5
    downsample: bool = True
    source_n: int = 64
    image_n: int = 192

    def __post_init__(self) -> None:
        for name in ("steps", "embed", "hidden1", "hidden2", "kernel", "source_n", "image_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.downsample and self.source_n % 2:
            raise ValueError(f"source_n must be even to downsample, got {self.source_n}")

    def to_dict(self) -> dict:
        return asdict(self)


class ConvGRUCell(nn.Module):
    """Convolutional GRU: gates and candidate from convolutions of ``[x, h]``."""

    def __init__(self, in_ch: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_ch + hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.cand = nn.Conv2d(in_ch + hidden, hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, h: Optional[torch.Tensor]) -> torch.Tensor:
        """The next state from input ``x`` and state ``h`` (None: the zero state, whose channels the
        convolutions then skip: the same result for a fifth to a half of the work)."""
        if h is None:
            k = x.shape[1]
            hid = self.hidden  # the reset gate multiplies the zero state: only the update gate is needed
            z = torch.sigmoid(F.conv2d(x, self.gates.weight[:hid, :k], self.gates.bias[:hid], padding=self.gates.padding))
            return z * torch.tanh(F.conv2d(x, self.cand.weight[:, :k], self.cand.bias, padding=self.cand.padding))
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * n


class RIM(nn.Module):
    """The MagNet RIM. ``forward(image, op, sigma)`` returns the estimate after every step."""

    def __init__(self, config: RIMConfig = RIMConfig()) -> None:
        super().__init__()
        self.config = config
        c, k = config, config.kernel
        stride = 2 if c.downsample else 1
        self.embed = nn.Conv2d(2, c.embed, k, stride=stride, padding=k // 2)
        self.gru1 = ConvGRUCell(c.embed, c.hidden1, k)
        if c.downsample:
            self.up = nn.ConvTranspose2d(c.hidden1, c.embed, 4, stride=2, padding=1)
        else:
            self.up = nn.ConvTranspose2d(c.hidden1, c.embed, k, stride=1, padding=k // 2)
        self.gru2 = ConvGRUCell(c.embed, c.hidden2, k)
        self.out = nn.Conv2d(c.hidden2, 1, k, padding=k // 2)

    def forward(self, image: torch.Tensor, op: BatchedOperator, sigma: torch.Tensor,
                init: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """Run the unrolled RIM.

        Parameters
        ----------
        image : Tensor
            ``(B, n_img, n_img)`` observed images.
        op : BatchedOperator or BatchedVisibilityOperator
            The batch's operators (anything with ``batch``, ``source_n`` and
            ``chi2_gradient(source, image, sigma)``); for visibilities ``image`` holds the dirty images.
        sigma : Tensor
            ``(B,)`` or ``(B, n_img, n_img)`` noise levels (> 0).
        init : Tensor, optional
            Starting estimate ``(B, n_src, n_src)`` (default zeros).

        Returns
        -------
        list of Tensor
            The ``T`` estimates ``(B, n_src, n_src)``.
        """
        c = self.config
        b, n = image.shape[0], c.source_n
        if tuple(image.shape[1:]) != (c.image_n, c.image_n) or op.source_n != n or op.batch != b:
            raise ValueError(f"image {tuple(image.shape)} and operator (batch {op.batch}, source {op.source_n}) do not "
                             f"match the model (image {c.image_n}, source {n})")
        dev = next(self.parameters()).device
        s = torch.zeros(b, n, n, device=dev) if init is None else init
        h1 = h2 = None  # the zero state (ConvGRUCell skips its channels)
        out = []
        for _ in range(c.steps):
            with torch.no_grad(), torch.autocast(device_type=dev.type, enabled=False):
                g = op.chi2_gradient(s.detach().float(), image.float(), sigma.float())
                g = g / (g.pow(2).mean(dim=(1, 2), keepdim=True).sqrt() + 1e-12)
            x = torch.stack([s, g.to(s.dtype)], dim=1)
            h1 = self.gru1(self.embed(x), h1)
            h2 = self.gru2(self.up(h1), h2)
            s = s + self.out(h2)[:, 0]
            out.append(s)
        return out

    @torch.no_grad()
    def reconstruct(self, op: Any, image: np.ndarray, sigma: Any, *, transforms: int = DEFAULT_TRANSFORMS) -> np.ndarray:
        """Reconstruct one lens, on the model's device.

        Parameters
        ----------
        op : observation operator
            Any object following the observation-operator protocol (``.shape``, ``.apply``,
            ``.adjoint``, ``.source_grid``, ``.matrix``) whose data are an image on the model's
            image grid (``n_data = image_n^2``) and whose source grid has ``source_n`` pixels a
            side. A :class:`lensinv.LensOperator` runs ``L`` and its PSF as a convolution; any
            other operator runs through its ``.matrix`` (scipy sparse or dense, real). A
            :class:`lensinv.VisibilityOperator` (interferometric data) runs through the dirty image
            and beam of the visibilities (:meth:`lensinv.VisibilityOperator.dirty`,
            :class:`rim.physics.BatchedVisibilityOperator`); its image grid must be the model's.
        image : array_like
            The observed image (``image_n x image_n``, or flat with ``image_n^2`` elements), in
            any surface-brightness unit; for a visibility operator the ``(n_vis,)`` complex
            visibilities (any flux unit, e.g. Jy).
        sigma : float or array_like
            Noise standard deviation (same unit as ``image``): a scalar, or a map of the image's
            shape; for visibilities a scalar or one per visibility (per real and per imaginary
            part); finite and > 0.
        transforms : {1, 2, 4, 8}
            How many symmetries of the square grids (:data:`rim.symmetry.D4`: rotations by
            multiples of 90 degrees and mirrors) the estimate is averaged over: the whole
            observation is turned, the network run on each turned problem (one batch), and the
            answers turned back and averaged. 1 runs the network once. The network's cost grows
            in proportion (2 cores: 0.08 / 0.13 / 0.23 / 0.44 s per lens with 1 / 2 / 4 / 8); the
            error falls (shipped weights, median source RMSE on 40 validation-galaxy lenses, PSF
            0.08", peak S/N 50: 0.0084 with 2, 0.0078 with 4, 0.0076 with 8; docs/performance.md).
            Default :data:`DEFAULT_TRANSFORMS` (2: within the 0.2 s per lens the project aims at).

        Returns
        -------
        ndarray
            The 2-D source (``source_n x source_n``, float64), in the unit of ``image``.

        Notes
        -----
        The reconstruction is equivariant to the data's unit: the image and sigma are divided by
        a robust scale (the peak of the 3x3 median-filtered ``|image|``, relative to
        :attr:`DATA_SCALE`, its median over the training lenses), the network runs on the
        normalised data and its estimate is multiplied back, so scaling ``image`` and ``sigma``
        by ``c > 0`` scales the source by ``c``. Only relative noise levels enter the network
        (its likelihood gradient is normalised per lens), so a scalar ``sigma`` of any positive
        size, down to 1e-300, gives the same finite answer, and a noise map is used relative to
        its median (clipped below at :attr:`MIN_RELATIVE_SIGMA` of it, with a warning).
        An all-zero image has no signal to reconstruct: the result is a zero source (logged).
        Visibilities are scaled in the same way by the robust scale of their natural-weighted
        dirty image, relative to :attr:`VIS_DATA_SCALE` (the alma training lenses' median).

        Raises
        ------
        ValueError
            ``op`` lacks the protocol or does not fit the model's grids, its matrix has no
            non-zero entries (no image pixel sees the source grid, or none where the primary beam
            is non-zero) or is complex; ``image`` has the wrong size or NaN/inf values; ``sigma``
            is not finite and > 0 or has the wrong shape; ``transforms`` is not 1, 2, 4 or 8.
        """
        from lensinv import LensOperator, VisibilityOperator

        syms = symmetries(transforms)
        if isinstance(op, VisibilityOperator):
            return self._reconstruct_visibilities(op, image, sigma, syms)
        c = self.config
        n_data, n_src = c.image_n ** 2, c.source_n ** 2
        missing = [a for a in ("shape", "apply", "adjoint", "source_grid") if not hasattr(op, a)]
        if missing:
            raise ValueError(f"op must be an observation operator (.shape, .apply, .adjoint, .source_grid, .matrix); "
                             f"{type(op).__name__} lacks {', '.join('.' + a for a in missing)}")
        grid_n = getattr(op.source_grid, "n", None)
        if tuple(op.shape) != (n_data, n_src) or grid_n != c.source_n:
            raise ValueError(f"the operator's grids (shape {tuple(op.shape)}, source grid {grid_n}) do not match the "
                             f"model's (image {c.image_n} -> {n_data} data, source {c.source_n} -> {n_src})")
        img = np.asarray(image)
        if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool) or np.iscomplexobj(img):
            raise ValueError(f"image must be a real numeric array, got dtype {img.dtype}")
        img = img.astype(np.float64)
        if img.size != n_data or img.ndim not in (1, 2) or (img.ndim == 2 and img.shape != (c.image_n, c.image_n)):
            raise ValueError(f"image must have shape ({c.image_n}, {c.image_n}) (or {n_data} elements) for this model, "
                             f"got {img.shape}; resample it onto the model's image grid first")
        img = img.reshape(c.image_n, c.image_n)
        if not np.all(np.isfinite(img)):
            raise ValueError("image contains NaN or inf values")
        try:
            sig = np.asarray(sigma, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sigma must be a finite scalar or an image-shaped map, > 0 ({exc})") from None
        if sig.shape not in ((), (n_data,), img.shape):
            raise ValueError(f"sigma must be a scalar or have the image's shape {img.shape}, got {sig.shape}")
        if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError("sigma must be finite and > 0 everywhere")
        if isinstance(op, LensOperator):
            mats, psfs, nnz = [op.L], [op.psf], op.L.count_nonzero()
        else:
            if not hasattr(op, "matrix"):
                raise ValueError(f"op ({type(op).__name__}) has no .matrix: the RIM needs the explicit matrix")
            mat = op.matrix
            try:
                mat = sp.csr_matrix(mat) if sp.issparse(mat) else np.asarray(mat)
                if np.iscomplexobj(mat):
                    raise ValueError("op.matrix is complex: the RIM reconstructs from real images only")
                if tuple(mat.shape) != (n_data, n_src):
                    raise ValueError(f"op.matrix has shape {tuple(mat.shape)}, expected {(n_data, n_src)}")
                mat = sp.csr_matrix(mat, dtype=np.float64)
            except (TypeError, AttributeError) as exc:
                raise ValueError(f"op.matrix must be a real scipy.sparse matrix or a dense array, got "
                                 f"{type(op.matrix).__name__} ({exc})") from None
            if not np.all(np.isfinite(mat.data)):
                raise ValueError("op.matrix contains NaN or inf values")
            mat.eliminate_zeros()
            mats, psfs, nnz = [mat], None, mat.nnz
        if nnz == 0:
            raise ValueError("op maps nothing: its matrix has no non-zero entries (no ray from the image reaches the "
                             "source grid; check the lens model and the grids)")

        scale = float(robust_scale(torch.as_tensor(img)[None])[0])
        if scale == 0:
            log.warning("the image is all zero: returning a zero source")
            return np.zeros((c.source_n, c.source_n))
        k = scale / self.DATA_SCALE
        if sig.ndim == 0:
            rel = np.ones(len(syms))
        else:
            sig = sig.reshape(img.shape)
            rel_map = _relative_sigma(sig, self.MIN_RELATIVE_SIGMA)  # once: it may warn
            rel = np.stack([np.ascontiguousarray(t.apply(rel_map)) for t in syms])
        log.debug("RIM data scale %g (peak S/N %g), %d transforms", k, scale / float(np.median(sig)), len(syms))
        # the turned problems (the identity first) in one batch: the same scale k (robust_scale is invariant)
        data = np.stack([np.ascontiguousarray(t.apply(img)) for t in syms])
        return self._estimate(lambda dev: SymmetrisedOperator(BatchedOperator.from_scipy(
            mats * len(syms), c.image_n, c.source_n, device=dev, psfs=None if psfs is None else psfs * len(syms)),
            syms), data, rel, k, syms)

    def _estimate(self, build: Any, data: np.ndarray, rel_sigma: np.ndarray, k: float,
                  syms: tuple[Symmetry, ...]) -> np.ndarray:
        """Run the network on the batch ``data / k`` (one turned problem per element of ``syms``)
        with the operators ``build(device)`` and noise ``rel_sigma`` (relative: only its shape
        across the data matters); the mean of the final estimates turned back, times ``k``."""
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            bop = build(dev)
            sig_t = torch.as_tensor(rel_sigma, dtype=torch.float32, device=dev)
            est = self(torch.as_tensor(data / k, dtype=torch.float32, device=dev), bop, sig_t)[-1]
        finally:
            self.train(was_training)
        est = est.double().cpu().numpy()
        out = np.mean([t.invert(e) for t, e in zip(syms, est)], axis=0) * k
        if not np.all(np.isfinite(out)):  # pragma: no cover - a guard, not expected with normalised data
            raise ValueError("the RIM produced NaN or inf for these data")
        return out

    def _reconstruct_visibilities(self, op: Any, vis: Any, sigma: Any, syms: tuple[Symmetry, ...]) -> np.ndarray:
        """:meth:`reconstruct` for a :class:`lensinv.VisibilityOperator` (see there)."""
        from .physics import BatchedVisibilityOperator

        c = self.config
        if op.image_grid.n != c.image_n or op.source_grid.n != c.source_n:
            raise ValueError(f"the operator's grids (image {op.image_grid.n}, source {op.source_grid.n}) do not match "
                             f"the model's (image {c.image_n}, source {c.source_n})")
        reached = np.flatnonzero(np.diff(op.L.indptr))
        if op.L.count_nonzero() == 0 or (op.primary_beam is not None and not np.any(op.primary_beam[reached] > 0)):
            raise ValueError("op maps nothing: no ray from the image reaches the source grid where the primary beam "
                             "is non-zero (check the lens model, the grids and the primary beam)")
        d = np.asarray(vis)
        if not (np.issubdtype(d.dtype, np.number) or d.dtype == bool):
            raise ValueError(f"vis must be a numeric (complex) array, got dtype {d.dtype}")
        try:
            sig = np.asarray(sigma, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sigma must be a finite scalar or one value per visibility, > 0 ({exc})") from None
        if sig.ndim and sig.size == d.size and np.all(np.isfinite(sig)) and np.all(sig > 0):
            sig = _relative_sigma(sig.reshape(-1), self.MIN_RELATIVE_SIGMA) * float(np.median(sig))
        dirty = op.dirty(d, sig)  # checks vis and sigma
        scale = float(robust_scale(torch.as_tensor(dirty.image)[None])[0])
        if scale == 0:
            log.warning("the visibilities are all zero (a zero dirty image): returning a zero source")
            return np.zeros((c.source_n, c.source_n))
        k = scale / self.VIS_DATA_SCALE
        log.debug("RIM visibility data scale %g (dirty-image peak S/N %g)", k, scale / dirty.sigma)
        # the turned problems: the dirty image turns with the sky (and, implicitly, its beam and primary beam)
        b = len(syms)
        data = np.stack([np.ascontiguousarray(t.apply(dirty.image)) for t in syms])
        return self._estimate(lambda dev: SymmetrisedOperator(BatchedVisibilityOperator.from_scipy(
            [op.L] * b, [dirty.beam] * b, c.image_n, c.source_n, device=dev, primary_beams=[op.primary_beam] * b),
            syms), data, np.ones(b), k, syms)

    #: Median over the realistic preset's training lenses of the robust image scale (the peak of the
    #: 3x3 median-filtered |image|; source peak 1): data are scaled to it before the network runs.
    DATA_SCALE = 0.52
    #: Floor of a sigma map relative to its median (keeps 1 / sigma^2 within float32).
    MIN_RELATIVE_SIGMA = 1e-4
    #: Median over the alma preset's training lenses of the robust scale of the natural-weighted dirty
    #: image (source peak 1; lenses 0-199 of seed 0, 10-90% range 5.5-20): visibilities are scaled so
    #: that their dirty image has it.
    VIS_DATA_SCALE = 12.2


def _relative_sigma(sig: np.ndarray, floor: float) -> np.ndarray:
    """``sig`` over its median, clipped below at ``floor`` (with a warning)."""
    rel = sig / np.median(sig)
    if rel.min() < floor:
        log.warning("sigma map spans more than 1/%g of its median: clipping it there", floor)
        rel = np.maximum(rel, floor)
    return rel


def robust_scale(images: torch.Tensor) -> torch.Tensor:
    """Per-image robust scale: the peak of the 3x3 median-filtered ``|image|`` (edges replicated, as
    ``scipy.ndimage.median_filter(mode="nearest")``), robust to single hot pixels; ``max |image|``
    where that is 0.

    Parameters
    ----------
    images : Tensor
        ``(B, n, n)`` images (any unit).

    Returns
    -------
    Tensor
        ``(B,)`` scales in the images' unit, >= 0 (0 only for an all-zero image). Positively
        homogeneous: ``robust_scale(c * x) == c * robust_scale(x)`` for ``c > 0``.
    """
    a = images.abs()
    padded = torch.nn.functional.pad(a[:, None], (1, 1, 1, 1), mode="replicate")
    windows = torch.nn.functional.unfold(padded, 3)  # (B, 9, n*n)
    scale = windows.median(dim=1).values.amax(dim=1)
    return torch.where(scale > 0, scale, a.flatten(1).amax(dim=1))


def data_scale(images: torch.Tensor, visibilities: bool = False) -> torch.Tensor:
    """The factor ``k`` (``(B,)``, > 0) by which the RIM divides images, sigma and sources so that the
    network sees data at :attr:`RIM.DATA_SCALE` (dirty images of visibilities, ``visibilities=True``:
    at :attr:`RIM.VIS_DATA_SCALE`): ``robust_scale(images) / DATA_SCALE``, and 1 for an all-zero
    image. Training and :meth:`RIM.reconstruct` use the same normalisation."""
    k = robust_scale(images) / (RIM.VIS_DATA_SCALE if visibilities else RIM.DATA_SCALE)
    return torch.where(k > 0, k, torch.ones_like(k))
