"""The symmetries of a square pixel grid (the dihedral group D4), for averaging the RIM over them.

A quarter turn or a mirror of the whole observation (image, noise map, PSF, and the source grid
with it) is another valid lensing problem: its operator is ``M' = P_img M P_src^T`` with ``P`` the
pixel permutations, the lens turned (or mirrored) and, where the source grid is not centred on the
same axis as the image, a constant deflection added. The RIM's training data are drawn with
random orientations, so the network should answer each turned problem with the turned source;
trained networks do so only approximately, and the mean of the turned answers, turned back,
has a smaller error than any one of them (test-time group averaging; e.g. deepinv's
``EquivariantReconstructor``). :meth:`rim.model.RIM.reconstruct` does this with
``transforms=2, 4 or 8`` elements of :data:`D4`, in the order listed there (identity and half
turn; the four rotations; rotations and mirrors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["D4", "TRANSFORM_COUNTS", "Symmetry", "SymmetrisedOperator", "symmetries"]

Array = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Symmetry:
    """A turn by ``quarter_turns`` x 90 degrees (``numpy.rot90``'s sense) followed, if ``mirror``,
    by a mirror of the columns (``x -> -x`` on a centred grid).

    Acts on the last two axes of numpy arrays and torch tensors (square grids, row-major pixels).
    On lensinv's grids (x along columns, y along rows, both increasing) a quarter turn is a
    clockwise turn of the sky by 90 degrees, so the turned lens has its position angle and centre
    turned by -90 degrees; the mirror is ``x -> -x`` (``phi -> pi - phi``). Tested in
    ``tests/test_rim_symmetry.py``.
    """

    quarter_turns: int
    mirror: bool

    def __post_init__(self) -> None:
        if self.quarter_turns not in (0, 1, 2, 3):
            raise ValueError(f"quarter_turns must be 0, 1, 2 or 3, got {self.quarter_turns!r}")

    def apply(self, x: Array) -> Array:
        """The turned (and mirrored) array (a view where numpy allows)."""
        if isinstance(x, torch.Tensor):
            y = torch.rot90(x, self.quarter_turns, dims=(-2, -1))
            return torch.flip(y, dims=(-1,)) if self.mirror else y
        y = np.rot90(x, self.quarter_turns, axes=(-2, -1))
        return np.flip(y, axis=-1) if self.mirror else y

    def invert(self, x: Array) -> Array:
        """The inverse: ``invert(apply(x)) == x``."""
        if isinstance(x, torch.Tensor):
            y = torch.flip(x, dims=(-1,)) if self.mirror else x
            return torch.rot90(y, -self.quarter_turns, dims=(-2, -1))
        y = np.flip(x, axis=-1) if self.mirror else x
        return np.rot90(y, -self.quarter_turns, axes=(-2, -1))

    def permutation(self, n: int) -> np.ndarray:
        """``p`` with ``apply(x).ravel() == x.ravel()[p]`` for an ``n x n`` array ``x``."""
        return np.ascontiguousarray(self.apply(np.arange(n * n).reshape(n, n))).ravel()

    def operator(self, matrix: sp.spmatrix, image_n: int, source_n: int) -> sp.csr_matrix:
        """``P_img M P_src^T``: the matrix of the turned problem, mapping ``apply(source)`` to
        ``apply(image)`` for an operator ``M`` (``image_n^2 x source_n^2``) mapping source to image."""
        m = sp.coo_matrix(matrix)
        if m.shape != (image_n * image_n, source_n * source_n):
            raise ValueError(f"matrix must be {image_n ** 2} x {source_n ** 2}, got {m.shape}")
        new_row = np.argsort(self.permutation(image_n))
        new_col = np.argsort(self.permutation(source_n))
        out = sp.csr_matrix((m.data, (new_row[m.row], new_col[m.col])), shape=m.shape)
        out.sort_indices()
        return out


#: The eight symmetries of the square, ordered so that the first 2 (identity, half turn) and the
#: first 4 (the rotations) are subgroups.
D4 = (Symmetry(0, False), Symmetry(2, False), Symmetry(1, False), Symmetry(3, False),
      Symmetry(0, True), Symmetry(2, True), Symmetry(1, True), Symmetry(3, True))

#: The numbers of transforms :func:`symmetries` accepts.
TRANSFORM_COUNTS = (1, 2, 4, 8)


def symmetries(transforms: int) -> tuple[Symmetry, ...]:
    """The first ``transforms`` elements of :data:`D4` (1: the identity alone; 2, 4, 8: subgroups).

    Raises
    ------
    ValueError
        ``transforms`` is not one of 1, 2, 4, 8.
    """
    if isinstance(transforms, (bool, np.bool_)) or transforms not in TRANSFORM_COUNTS:
        raise ValueError(f"transforms must be one of {', '.join(map(str, TRANSFORM_COUNTS))}, got {transforms!r}")
    return D4[:int(transforms)]


class SymmetrisedOperator:
    """One lens seen through several symmetries: element ``b`` of the batch is the observation
    turned by ``syms[b]``, whose operator is ``P_img M P_src^T`` (:meth:`Symmetry.operator`).

    Nothing is permuted: ``chi2_gradient`` turns each element's source, image and noise map back,
    evaluates the gradient with ``base`` (a batched operator holding the lens ``len(syms)`` times,
    e.g. ``BatchedOperator.from_scipy([L] * B, ...)``) and turns the gradients forward, which is
    the same as the turned operators' gradient (``P`` are permutations).

    Parameters
    ----------
    base : BatchedOperator or BatchedVisibilityOperator
        Batch of ``len(syms)`` copies of one lens's operator.
    syms : sequence of Symmetry
    """

    def __init__(self, base: Any, syms: tuple[Symmetry, ...]) -> None:
        if base.batch != len(syms):
            raise ValueError(f"base must hold the lens once per symmetry ({len(syms)}), got batch {base.batch}")
        self.base, self.syms = base, tuple(syms)
        self.batch, self.source_n, self.image_n = base.batch, base.source_n, base.image_n

    def _each(self, x: torch.Tensor, forward: bool) -> torch.Tensor:
        return torch.stack([(t.apply if forward else t.invert)(x[b]) for b, t in enumerate(self.syms)])

    def chi2_gradient(self, source: torch.Tensor, image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The gradient of each turned problem's ``chi^2 / 2`` (see ``BatchedOperator.chi2_gradient``)."""
        sig = sigma if sigma.ndim == 1 else self._each(sigma, forward=False)
        grad = self.base.chi2_gradient(self._each(source, False), self._each(image, False), sig)
        return self._each(grad, forward=True)
