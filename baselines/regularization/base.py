"""The base class of regularizations and their registry.

A regularization is a small frozen dataclass deriving from :class:`Regularization`: it gives the
matrix ``H`` of the prior ``E_S(s) = s^T H s / 2`` on an ``n x n`` source grid (symmetric
positive definite, float64 CSR), optionally the exact ``log det H`` of the full grid, and two
numbers that help the evidence search start close to its maximum. ``@register`` makes it
available by name (``invert(..., regularization="gradient")``); an instance can be passed
directly without registering. See ``docs/extending.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Regularization:
    """Base class: a quadratic prior ``E_S(s) = s^T H s / 2`` on the source pixels.

    Class attributes
    ----------------
    name : str
        Registry key and the name results report.
    balance_offset : float
        The evidence optimum of ``lam`` relative to the balance ``tr(M^T C^-1 M) = lam tr(H)``
        (a starting guess; 1 if unknown).
    coarse_offset : float
        ``log10`` of the full-resolution optimum over that of the 2x2-binned source (0 if unknown).
    """

    name: ClassVar[str] = "custom"
    balance_offset: ClassVar[float] = 1.0
    coarse_offset: ClassVar[float] = 0.0

    def matrix(self, n: int) -> sp.csr_matrix:
        """``H`` for an ``n x n`` grid (row-major pixels): float64 CSR, symmetric positive definite."""
        raise NotImplementedError

    def log_det(self, n: int) -> Optional[float]:
        """Exact ``log det H`` of the full ``n x n`` grid, or None to have it computed (Cholesky)."""
        return None


_REGISTRY: dict[str, type[Regularization]] = {}


def register(cls: type[Regularization]) -> type[Regularization]:
    """Class decorator: make a regularization available by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Regularization)):
        raise TypeError(f"register expects a Regularization subclass, got {cls!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a regularization named {cls.name!r} is registered already")
    _REGISTRY[cls.name] = cls
    return cls


def forms() -> tuple[str, ...]:
    """Names of the registered regularizations."""
    return tuple(_REGISTRY)


def get_regularization(regularization: Union[str, Regularization]) -> Regularization:
    """A regularization by name, or the instance given; ``ValueError`` naming the known ones otherwise."""
    if isinstance(regularization, Regularization):
        return regularization
    if isinstance(regularization, str) and regularization in _REGISTRY:
        return _REGISTRY[regularization]()
    raise ValueError(f"regularization must be one of {', '.join(_REGISTRY)} or a Regularization instance, "
                     f"got {regularization!r}")


def check_grid(n: int) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return int(n)


def second_difference(n: int) -> sp.csr_matrix:
    """``tridiag(-1, 2, -1)``: first differences with zeros beyond both ends, squared (``D^T D``)."""
    return sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")


def kron_sum(t: sp.csr_matrix) -> sp.csr_matrix:
    """``I (x) t + t (x) I``: the 1-D operator ``t`` along rows and along columns."""
    eye = sp.identity(t.shape[0], format="csr")
    h = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
    h.sort_indices()
    return h


def second_difference_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues of :func:`second_difference`: ``4 sin^2(pi k / (2 (n + 1)))``, ``k = 1..n``."""
    k = np.arange(1, n + 1)
    return 4.0 * np.sin(np.pi * k / (2.0 * (n + 1))) ** 2
