"""Curvature regularization: squared second differences along rows and columns, zero beyond the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from .base import Regularization, check_grid, kron_sum, register, second_difference, second_difference_eigenvalues


@register
@dataclass(frozen=True)
class Curvature(Regularization):
    """``E_S`` of the second differences; vanishes on planes ``a + b x + c y + d x y`` inside the grid."""

    name: ClassVar[str] = "curvature"
    balance_offset: ClassVar[float] = 20.0
    coarse_offset: ClassVar[float] = 0.53

    def matrix(self, n: int) -> sp.csr_matrix:
        t = second_difference(check_grid(n))
        return kron_sum((t @ t).tocsr())

    def log_det(self, n: int) -> float:
        mu = second_difference_eigenvalues(check_grid(n)) ** 2
        return float(np.sum(np.log(mu[:, None] + mu[None, :])))
