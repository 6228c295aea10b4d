"""The observation-operator protocol every solver takes (DESIGN.md, "Observation operators").

Any object with these members works with ``baselines.invert``, the RIM's ``reconstruct`` and
:func:`lensinv.testing.dot_test`; :class:`lensinv.LensOperator` (imaging, ``d = F L s``) is one.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from .grids import SourceGrid


@runtime_checkable
class ObservationOperator(Protocol):
    """A linear map from source pixels to data, with its exact adjoint.

    Attributes
    ----------
    shape : tuple of int
        ``(n_data, n_src^2)``: data values (image pixels, or complex visibilities) by source pixels.
    source_grid : SourceGrid
        The source-plane grid (arcsec).
    matrix
        The explicit matrix (scipy sparse or dense ndarray, real or complex), where one exists.
        An operator for which forming it is wasteful may instead offer ``normal_matrix``.

    Methods
    -------
    apply(s)
        Source (flat ``n_src^2`` or 2-D ``n_src x n_src``) -> model data (flat, or shaped like the
        data, e.g. an image; complex for visibilities).
    adjoint(d)
        The exact transpose with respect to the real inner product:
        ``Re <apply(s), d> = <s, adjoint(d)>``; returns a real source (flat or 2-D as ``d`` is).
    normal_matrix(weights, unknowns=None, dense=True)  (optional)
        ``Re(M^H diag(weights) M)`` restricted to the source pixels ``unknowns`` (all if None):
        with ``dense=True`` an ndarray of which at least the upper triangle (``j >= i``) is filled
        (solvers read only that), otherwise a symmetric scipy sparse matrix. Solvers use it,
        where present, instead of ``matrix``.
    """

    shape: tuple[int, int]
    source_grid: SourceGrid

    def apply(self, source: np.ndarray) -> np.ndarray: ...

    def adjoint(self, data: np.ndarray) -> np.ndarray: ...


class NotAnOperatorError(TypeError, ValueError):
    """An argument does not follow the observation-operator protocol (both a TypeError and, like
    every other invalid argument in lensinv, a ValueError)."""


def check_operator(op: Any, name: str = "op") -> None:
    """Raise :class:`NotAnOperatorError` naming what is missing unless ``op`` follows the protocol."""
    missing = [a for a in ("shape", "apply", "adjoint", "source_grid") if not hasattr(op, a)]
    if not (hasattr(op, "matrix") or hasattr(op, "normal_matrix")):
        missing.append("matrix or normal_matrix")
    if missing:
        raise NotAnOperatorError(f"{name} must be an observation operator (lensinv.ObservationOperator); "
                        f"{type(op).__name__} lacks {', '.join(missing)}")
    if not isinstance(op.source_grid, SourceGrid):
        raise NotAnOperatorError(f"{name}.source_grid must be a lensinv.SourceGrid, got {type(op.source_grid).__name__}")
    shape = tuple(op.shape)
    if len(shape) != 2 or shape[1] != op.source_grid.size:
        raise NotAnOperatorError(f"{name}.shape must be (n_data, {op.source_grid.size}) for its source grid, got {shape}")


def explicit_matrix(op: Any) -> Optional[Any]:
    """``op.matrix`` if the operator has one, else None."""
    return getattr(op, "matrix", None)
