"""Zeroth-order regularization: the source's brightness itself (``H = I``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import scipy.sparse as sp

from .base import Regularization, check_grid, register


@register
@dataclass(frozen=True)
class Zeroth(Regularization):
    """``E_S = sum s_i^2 / 2``."""

    name: ClassVar[str] = "zeroth"
    balance_offset: ClassVar[float] = 0.4
    coarse_offset: ClassVar[float] = -0.38

    def matrix(self, n: int) -> sp.csr_matrix:
        n = check_grid(n)
        return sp.identity(n * n, format="csr")

    def log_det(self, n: int) -> float:
        return 0.0
