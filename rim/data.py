"""Training data for the RIM: simulated lenses from an HDF5 file or generated on the fly.

Both are map-style datasets indexed by an integer, so a batch is a pure function
of (step, rank): :class:`StepBatches` yields the indices of step ``k`` for rank
``r`` of ``world``, which makes training resumable exactly and splits data
across data-parallel ranks without overlap.

- :class:`StreamDataset`: lens ``i`` is ``lensinv.simulate.simulate(i, seed, config)``;
  the index grows without end (no epochs, no repeats).
- :class:`FileDataset`: lenses of a :class:`lensinv.dataset.LensDataset`, in a
  seeded random order that is redrawn every epoch.

Lensing matrices L are built (or read) in the DataLoader's worker processes
(F L is never formed: the blur runs as a convolution on the device); the
collate function returns numpy arrays, and :func:`to_device` makes the
block-diagonal torch operator in the training process. Interferometric lenses
(the ``alma`` preset) come as their dirty image, dirty beam and dirty-image
noise (:meth:`lensinv.Observation.dirty`) with ``L`` and the primary beam, and
become a :class:`rim.physics.BatchedVisibilityOperator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import scipy.sparse as sp
import torch

from lensinv.observation import Observation
from lensinv.simulate import SimulationConfig, simulate

from .physics import BatchedOperator, BatchedVisibilityOperator


@dataclass(frozen=True, eq=False)
class Sample:
    """What a training batch needs of one :class:`lensinv.Observation`, and no more: the arrays and
    the operator as a matrix (``L``, blurred by ``psf`` on the device; or a stored ``F L`` with
    ``psf`` None), cheap to send from DataLoader workers. Not a second observation record: the
    lens, grids and metadata stay in the Observation. Interferometric data: ``image`` is the
    dirty image, ``sigma`` its noise, ``beam`` the normalised dirty beam (float32) and
    ``primary_beam`` the primary beam (None: 1)."""

    index: int
    source: np.ndarray
    image: np.ndarray
    sigma: float
    matrix: sp.csr_matrix  # L (blurred by psf) or an already formed F L (psf None)
    psf: Optional[np.ndarray]
    beam: Optional[np.ndarray] = None
    primary_beam: Optional[np.ndarray] = None


def sample(obs: Observation) -> Sample:
    """The :class:`Sample` of an observation (a simulation or a stored lens)."""
    if obs.coverage is not None:
        d = obs.dirty()
        return Sample(obs.index, obs.source, d.image, d.sigma, obs.op.L, None, d.beam.astype(np.float32),
                      obs.primary_beam)
    if obs.stored_matrix is not None:
        return Sample(obs.index, obs.source, obs.image, obs.sigma, obs.stored_matrix, None)
    op = obs.operator()
    return Sample(obs.index, obs.source, obs.image, obs.sigma, op.L, op.psf)


class StreamDataset(torch.utils.data.Dataset):
    """Endless simulated lenses: item ``i`` is lens ``offset + i`` of the data set ``(seed, config)``."""

    def __init__(self, seed: int, config: SimulationConfig, offset: int = 0) -> None:
        self.seed, self.config, self.offset = seed, config, offset

    def __len__(self) -> int:  # effectively unbounded
        return 2**62

    def __getitem__(self, i: int) -> Sample:
        return sample(simulate(self.offset + int(i), self.seed, self.config))


class FileDataset(torch.utils.data.Dataset):
    """Lenses from data-set files (``lensinv.dataset.LensDataset``); operators rebuilt or read."""

    def __init__(self, paths: Any) -> None:
        from lensinv.dataset import LensDataset

        self.ds = LensDataset(paths)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Sample:
        return sample(self.ds[int(i)])


class StepBatches(torch.utils.data.Sampler):
    """Batches of indices for steps ``start, start + 1, ...`` on rank ``rank`` of ``world``.

    ``length=None``: a stream (step ``k`` takes indices ``(k * world + rank) * batch + j``).
    Otherwise a finite data set visited in a seeded random order per epoch.
    """

    def __init__(self, batch: int, start: int = 0, rank: int = 0, world: int = 1, length: Optional[int] = None,
                 seed: int = 0) -> None:
        self.batch, self.start, self.rank, self.world, self.length, self.seed = batch, start, rank, world, length, seed

    def indices(self, step: int) -> list[int]:
        first = (step * self.world + self.rank) * self.batch
        pos = range(first, first + self.batch)
        if self.length is None:
            return list(pos)
        out = []
        for p in pos:
            epoch, k = divmod(p, self.length)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.length)
            out.append(int(perm[k]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return 2**62


def collate(samples: list[Sample]) -> dict:
    return {"index": np.array([s.index for s in samples]), "source": np.stack([s.source for s in samples]),
            "image": np.stack([s.image for s in samples]), "sigma": np.array([s.sigma for s in samples]),
            "matrices": [s.matrix for s in samples], "psfs": [s.psf for s in samples],
            "beams": [s.beam for s in samples], "primary_beams": [s.primary_beam for s in samples]}


def to_device(batch: dict, image_n: int, source_n: int, device: Any) -> tuple:
    """``(source, image, sigma, op)`` tensors on ``device``, ``op`` a :class:`BatchedOperator` (or a
    :class:`BatchedVisibilityOperator` for interferometric lenses, ``image`` their dirty images).
    Noise-free lenses (sigma 0) get sigma 1: with the RIM's normalised gradient a uniform sigma's
    value does not matter."""
    src = torch.as_tensor(batch["source"], dtype=torch.float32, device=device)
    img = torch.as_tensor(batch["image"], dtype=torch.float32, device=device)
    sig = torch.as_tensor(batch["sigma"], dtype=torch.float32, device=device)
    sig = torch.where(sig > 0, sig, torch.ones_like(sig))
    beams = batch.get("beams") or [None]
    if beams[0] is not None:
        op = BatchedVisibilityOperator.from_scipy(batch["matrices"], beams, image_n, source_n, device=device,
                                                  primary_beams=batch["primary_beams"])
    else:
        op = BatchedOperator.from_scipy(batch["matrices"], image_n, source_n, device=device, psfs=batch["psfs"])
    return src, img, sig, op
