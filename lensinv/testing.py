"""Checks for observation operators (public: use them in the tests of your own operators)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import check_operator


@dataclass(frozen=True)
class DotTestResult:
    """Outcome of :func:`dot_test`: the two inner products and their relative difference."""

    forward: float
    adjoint: float
    relative_error: float
    passed: bool


def dot_test(op: Any, rtol: float = 1e-10, trials: int = 3, seed: int = 0, raise_error: bool = True) -> DotTestResult:
    """Adjoint (dot-product) test: ``Re <apply(s), d> == <s, adjoint(d)>`` for random ``s``, ``d``.

    Parameters
    ----------
    op : observation operator
        Anything with ``shape``, ``apply``, ``adjoint``, ``source_grid`` (DESIGN.md).
    rtol : float
        Allowed ``|fwd - adj| / max(|fwd|, |adj|, tiny)``.
    trials : int
        Random pairs tried (the worst is reported).
    seed : int
        Random seed (deterministic).
    raise_error : bool
        Raise ``AssertionError`` when the test fails (else only report).

    Returns
    -------
    DotTestResult
    """
    check_operator(op)
    rng = np.random.default_rng(seed)
    n_data, n_src = op.shape
    worst = None
    for _ in range(trials):
        s = rng.normal(size=n_src)
        model = np.asarray(op.apply(s))
        d = rng.normal(size=model.shape)
        if np.iscomplexobj(model):
            d = d + 1j * rng.normal(size=model.shape)
        if model.size != n_data:
            raise AssertionError(f"apply returned {model.size} values, shape says {n_data}")
        fwd = float(np.real(np.vdot(d.ravel(), model.ravel())))
        back = np.asarray(op.adjoint(d))
        if np.iscomplexobj(back):
            raise AssertionError("adjoint must return a real source (the real inner product's adjoint)")
        adj = float(np.dot(s, back.ravel()))
        err = abs(fwd - adj) / max(abs(fwd), abs(adj), np.finfo(float).tiny)
        if worst is None or err > worst.relative_error:
            worst = DotTestResult(forward=fwd, adjoint=adj, relative_error=err, passed=err <= rtol)
    if raise_error and not worst.passed:
        raise AssertionError(f"dot test failed: <Ms, d> = {worst.forward!r}, <s, M^T d> = {worst.adjoint!r}, "
                             f"relative error {worst.relative_error:.3g} > {rtol:g}")
    return worst
