"""Torch sparse versions of the operators, with an autograd path whose backward
is the exact transpose product (imported lazily: torch is optional for the physics)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch


def csr_to_torch(m: sp.csr_matrix, device: Any = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (int64 indices)."""
    m = m.tocsr()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(np.asarray(m.data)).to(dtype or torch.float32),
            size=m.shape, device=device, check_invariants=False)


class _SparseLinear(torch.autograd.Function):
    """``y = x A^T`` for a batch of row vectors ``x``; backward ``g A`` via the stored transpose."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, A: torch.Tensor, At: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(At)
        return (A @ x.T).T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (At,) = ctx.saved_tensors
        return (At @ grad.T).T, None, None


def sparse_apply(x: torch.Tensor, A: torch.Tensor, At: torch.Tensor) -> torch.Tensor:
    """Apply sparse ``A`` to the last axis of ``x`` (any leading batch shape), differentiably."""
    lead = x.shape[:-1]
    y = _SparseLinear.apply(x.reshape(-1, x.shape[-1]), A, At)
    return y.reshape(*lead, A.shape[0])


@dataclass(frozen=True, eq=False)
class TorchOperator:
    """One lens's ``F L`` as torch sparse CSR tensors.

    Attributes
    ----------
    matrix : torch.Tensor
        Sparse CSR, ``n_img^2 x n_src^2``.
    matrix_t : torch.Tensor
        Sparse CSR of the transpose.
    image_n, source_n : int
        Grid sides.
    """

    matrix: torch.Tensor
    matrix_t: torch.Tensor
    image_n: int
    source_n: int

    @classmethod
    def from_scipy(cls, m: sp.csr_matrix, image_n: int, source_n: int, device: Any = None,
                   dtype: Optional[torch.dtype] = None, matrix_t: Optional[sp.csr_matrix] = None) -> "TorchOperator":
        mt = m.T.tocsr() if matrix_t is None else matrix_t
        return cls(csr_to_torch(m, device, dtype), csr_to_torch(mt, device, dtype), image_n, source_n)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    def _flat(self, x: torch.Tensor, n: int, name: str) -> tuple[torch.Tensor, bool]:
        if x.shape[-2:] == (n, n):
            return x.reshape(*x.shape[:-2], n * n), True
        if x.shape[-1] == n * n:
            return x, False
        raise ValueError(f"{name} must end in ({n}, {n}) or ({n * n},), got {tuple(x.shape)}")

    def apply(self, source: torch.Tensor) -> torch.Tensor:
        """``F L s`` for ``s`` of shape ``(..., n_src^2)`` or ``(..., n_src, n_src)``; differentiable."""
        flat, was_2d = self._flat(source, self.source_n, "source")
        out = sparse_apply(flat, self.matrix, self.matrix_t)
        return out.reshape(*out.shape[:-1], self.image_n, self.image_n) if was_2d else out

    def adjoint(self, image: torch.Tensor) -> torch.Tensor:
        """``(F L)^T d``, same layout rules as :meth:`apply`; differentiable."""
        flat, was_2d = self._flat(image, self.image_n, "image")
        out = sparse_apply(flat, self.matrix_t, self.matrix)
        return out.reshape(*out.shape[:-1], self.source_n, self.source_n) if was_2d else out
