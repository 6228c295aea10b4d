"""Gradient regularization: squared first differences along rows and columns, zero beyond the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from .base import Regularization, check_grid, kron_sum, register, second_difference, second_difference_eigenvalues


@register
@dataclass(frozen=True)
class Gradient(Regularization):
    """``E_S = sum (s_i - s_j)^2 / 2`` over neighbouring pixels; vanishes on constants inside the grid."""

    name: ClassVar[str] = "gradient"
    balance_offset: ClassVar[float] = 3.0
    coarse_offset: ClassVar[float] = 0.04

    def matrix(self, n: int) -> sp.csr_matrix:
        return kron_sum(second_difference(check_grid(n)))

    def log_det(self, n: int) -> float:
        mu = second_difference_eigenvalues(check_grid(n))
        return float(np.sum(np.log(mu[:, None] + mu[None, :])))
