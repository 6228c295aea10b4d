"""The normal equations of a linear observation: ``P t = b`` over the unknown source pixels.

For data ``d``, weights ``W = C^-1 = diag(1/sigma^2)`` on the used data, an operator ``M`` and an
optional prior mean ``s0`` (the source is ``s = s0 + t``), they are

    P = Re(M^H W M),     b = Re(M^H W (d - M s0)),

restricted to the source pixels that some used datum depends on (the unknowns; the others stay at
``s0``, zero by default), or over the whole source grid (``unknowns="all"``: the pixels no datum
depends on are then held by the prior alone, and the evidence of different operators on the same
grid is that of one fixed prior, so it can be compared, e.g. across lens models). Any observation
operator works (DESIGN.md): ``normal_matrix`` is used where the operator offers it
(``LensOperator``: ``L^T (F^T W F) L``), else its ``matrix``.

Extra linear parameters (``basis``): data ``d = M s + B a + n`` with columns ``B`` (e.g. the lens
galaxy's light profiles) whose amplitudes ``a`` have a Gaussian prior ``N(0, V)``, ``V =
diag(basis_std^2)`` (flat-ish where ``basis_std`` is large), not regularized and not scaled by
``lam``. They are marginalised analytically: with ``G = M^T W B``, ``K = B^T W B + V^-1`` and
``c = B^T W d``, the source's equations become the Schur complement

    P' = P - G K^-1 G^T,     b' = b - G K^-1 c,

and the misfit of a source is profiled over ``a``, ``a(t) = K^-1 B^T W (d - M t)``,
``chi2'(t) = |W^1/2 (d - M t - B a)|^2 + a^T V^-1 a``, while ``log_norm`` gains
``-log det(V K) / 2``. The evidence the search then computes is exactly that of the joint model
``log N(d; 0, C + M (lam H)^-1 M^T + B V B^T)``, and the most probable ``(t, a(t))`` is the joint
solution ``[[P + lam H, G], [G^T, K]] [t; a] = [b; c]``. The extra parameters need the dense
backend (``P'`` is a dense low-rank update) and real data.

Everything is in normalised units: data, sigma and sources are divided by ``unit``, a power of two
near the median sigma, so the matrices are well scaled whatever the data's units (the results
are the same to rounding: powers of two scale exactly).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import scipy.sparse as sp
from scipy.linalg.blas import dsymv

from lensinv.protocol import check_operator, explicit_matrix

from .solvers import choose_backend


@dataclass(frozen=True, eq=False)
class NormalEquations:
    """``P t = b`` (see the module docstring), in units of ``unit``.

    Attributes
    ----------
    P : ndarray or scipy.sparse.csr_matrix
        ``n x n`` over the unknowns: dense with (at least) its upper triangle filled, or sparse.
    b : ndarray
        ``(n,)``.
    unknowns : ndarray of int
        Flat source-pixel indices solved for (sorted).
    source_n : int
        Source grid side (pixels).
    n_data : int
        Real data values used (a complex visibility counts twice).
    log_norm : float
        ``-n_data log(2 pi) / 2 - sum log sigma`` over the used data, in the data's own units.
    unit : float
        Data (and source) unit of the normalised quantities.
    backend : str
        Factorisation backend chosen for ``P`` (``"dense"``, ``"cholmod"``, ``"splu"``).
    misfit : callable
        ``chi2`` (normalised units are unit-free here) of a correction ``t`` over the unknowns.
    prior_mean : ndarray or None
        ``s0`` over the whole source grid (flat, normalised), or None for zero.
    seconds : float
    amplitudes : callable or None
        With a ``basis``: the most probable amplitudes ``a(t)`` (normalised units: multiply by
        ``unit``) of a correction ``t``; None without one.
    n_basis : int
        Columns of the basis (0 without one).
    """

    P: Union[np.ndarray, sp.csr_matrix]
    b: np.ndarray
    unknowns: np.ndarray
    source_n: int
    n_data: int
    log_norm: float
    unit: float
    backend: str
    misfit: Callable[[np.ndarray], float] = field(repr=False)
    prior_mean: Optional[np.ndarray] = None
    seconds: float = 0.0
    amplitudes: Optional[Callable[[np.ndarray], np.ndarray]] = field(default=None, repr=False)
    n_basis: int = 0

    @property
    def n(self) -> int:
        return int(self.unknowns.size)

    def full_source(self, t: np.ndarray) -> np.ndarray:
        """``s0 + t`` on the whole source grid (flat, normalised units)."""
        s = np.zeros(self.source_n**2) if self.prior_mean is None else self.prior_mean.copy()
        s[self.unknowns] += t
        return s


def _flat_data(op: Any, data: Any, name: str) -> np.ndarray:
    n_data = int(op.shape[0])
    raw = np.asarray(data)
    if raw.dtype.kind not in "biufc":
        raise ValueError(f"{name} must be an array of numbers, got dtype {raw.dtype}")
    if raw.size != n_data:
        if hasattr(op, "image_grid") and raw.ndim == 2:
            n = op.image_grid.n
            raise ValueError(f"{name} must have shape ({n}, {n}) to match the operator, got {raw.shape}")
        raise ValueError(f"{name} must have {n_data} elements to match the operator, got shape {raw.shape}")
    d = raw.reshape(-1).astype(np.complex128 if np.iscomplexobj(raw) else np.float64, copy=False)
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} contains NaN or inf values")
    return d


def check_observation(op: Any, data: Any, sigma: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and flatten ``(data, sigma, mask)`` for ``op``: returns ``d``, ``sigma`` and the used-data mask."""
    check_operator(op)
    d = _flat_data(op, data, "image")
    sig_raw = np.asarray(sigma)
    if sig_raw.dtype.kind not in "biuf":
        raise ValueError(f"sigma must be a real number or a real array, got dtype {sig_raw.dtype}")
    sig = sig_raw.astype(np.float64)
    if sig.ndim == 0:
        if not math.isfinite(float(sig)) or sig <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {float(sig)!r}")
        sig = np.full(d.size, float(sig))
    else:
        if sig.size != d.size:
            raise ValueError(f"sigma map must have the data's shape {np.shape(data)}, got {sig.shape}")
        sig = sig.reshape(-1)
    if mask is None:
        use = np.ones(d.size, dtype=bool)
    else:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
        if m.size != d.size:
            raise ValueError(f"mask must have the data's shape {np.shape(data)}, got {m.shape}")
        use = m.reshape(-1)
    if not use.any():
        raise ValueError("mask leaves no image pixels (data) to fit")
    s_used = sig[use]
    if not np.all(np.isfinite(s_used)) or np.any(s_used <= 0):
        raise ValueError("sigma must be finite and > 0 on every used pixel")
    return d, sig, use


def _power_of_two_near(x: float) -> float:
    return math.ldexp(1.0, int(round(math.log2(x))))


#: Noise levels (data units) outside this range leave lam ~ 1/sigma^2 outside float64's normal range.
SIGMA_RANGE = (1e-150, 1e150)
#: Largest |datum| / sigma (and |prior mean| / sigma): beyond it chi^2 overflows float64.
MAX_SIGNAL_TO_NOISE = 1e100


def _check_scales(d_used: np.ndarray, s_used: np.ndarray, s0: Optional[np.ndarray]) -> float:
    """The power-of-two data unit near the median sigma; ``ValueError`` where float64 cannot hold the problem."""
    median = float(np.median(s_used))
    if not SIGMA_RANGE[0] <= median <= SIGMA_RANGE[1]:
        raise ValueError(f"sigma (median {median:.3g}) must be within {SIGMA_RANGE[0]:g}..{SIGMA_RANGE[1]:g} "
                         "data units: rescale the data and sigma (the solution scales with them)")
    unit = _power_of_two_near(median)
    if float(np.max(np.abs(d_used))) > MAX_SIGNAL_TO_NOISE * unit:
        raise ValueError(f"image values reach {float(np.max(np.abs(d_used))):.3g}, over {MAX_SIGNAL_TO_NOISE:g} "
                         f"times sigma ({median:.3g}): check the data's units or sigma")
    if s0 is not None and float(np.max(np.abs(s0), initial=0.0)) > MAX_SIGNAL_TO_NOISE * unit:
        raise ValueError(f"prior_mean reaches {float(np.max(np.abs(s0))):.3g}, over {MAX_SIGNAL_TO_NOISE:g} "
                         f"times sigma ({median:.3g}): check its units")
    return unit


def _check_prior_mean(op: Any, prior_mean: Any) -> Optional[np.ndarray]:
    if prior_mean is None:
        return None
    n = op.source_grid.n
    raw = np.asarray(prior_mean)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"prior_mean must be a real source array, got dtype {raw.dtype}")
    s0 = raw.astype(np.float64)
    if s0.shape not in ((n, n), (n * n,)):
        raise ValueError(f"prior_mean must have shape ({n}, {n}) or ({n * n},), got {s0.shape}")
    if not np.all(np.isfinite(s0)):
        raise ValueError("prior_mean contains NaN or inf values")
    return s0.reshape(-1)


def normal_equations(op: Any, data: Any, sigma: Any, mask: Any = None, *, prior_mean: Any = None,
                     backend: str = "auto", unknowns: str = "reached", basis: Any = None,
                     basis_std: Any = None) -> NormalEquations:
    """Form the normal equations of an observation (see the module docstring).

    Parameters
    ----------
    op : observation operator
        ``lensinv.LensOperator`` or anything following the protocol in DESIGN.md.
    data : ndarray
        ``n_data`` values (an image, flat or 2-D; or complex visibilities), in the source's units.
    sigma : float or ndarray
        Noise standard deviation per datum (per real and imaginary part for complex data).
    mask : ndarray of bool, optional
        Data to use (True). Default: all.
    prior_mean : ndarray, optional
        ``s0``: the source is ``s0 + t`` and the equations are for ``t``.
    backend : {"auto", "cholmod", "dense", "splu"}
    unknowns : {"reached", "all"}
        Solve for the source pixels some used datum depends on (default), or for every pixel of
        the source grid (see the module docstring).
    basis : ndarray, optional
        ``(n_data, n_basis)`` real columns of extra linear parameters (data units per unit
        amplitude), marginalised with the prior ``N(0, basis_std^2)`` (see the module docstring).
    basis_std : float or ndarray, optional
        Prior standard deviation of the amplitudes (> 0, finite; scalar or one per column), in the
        data's units per unit of the columns. Required with ``basis``.
    """
    t0 = time.perf_counter()
    d, sig, use = check_observation(op, data, sigma, mask)
    s0 = _check_prior_mean(op, prior_mean)
    if unknowns not in ("reached", "all"):
        raise ValueError(f"unknowns must be 'reached' or 'all', got {unknowns!r}")
    B, v = _check_basis(basis, basis_std, d)
    if B is not None and backend not in ("auto", "dense"):
        raise ValueError(f"backend must be 'auto' or 'dense' with a basis (the Schur complement is dense), "
                         f"got {backend!r}")
    if B is not None:
        backend = "dense"
    unit = _check_scales(d[use], sig[use], s0)
    w_all = np.zeros(d.size)
    w_all[use] = (unit / sig[use]) ** 2
    dn = d / unit
    s0n = None if s0 is None else s0 / unit
    if s0n is not None:
        dn = dn - np.asarray(op.apply(s0n)).reshape(-1)
    n_real = int(use.sum()) * (2 if np.iscomplexobj(d) else 1)
    log_norm = -0.5 * n_real * math.log(2.0 * math.pi) - (2 if np.iscomplexobj(d) else 1) * float(
        np.sum(np.log(sig[use])))
    n_src = op.source_grid.n
    M = explicit_matrix(op)
    every = unknowns == "all"
    if M is not None:
        P, b, idx, chosen, resid, quadratic_misfit = _from_matrix(op, M, dn, w_all, use, backend, every)
    else:
        P, b, idx, chosen, resid, quadratic_misfit = _from_normal_matrix(op, dn, w_all, backend, every)
    if np.iscomplexobj(d) and not _model_is_complex(op, M):
        raise ValueError("image is complex but the operator's model data are real")
    amplitudes, n_basis = None, 0
    if B is None and quadratic_misfit is not None:
        misfit = quadratic_misfit
    elif B is None:
        def misfit(t: np.ndarray) -> float:
            r = resid(t)
            return float(np.real(np.vdot(r, r)))
    else:
        if np.iscomplexobj(d) or _model_is_complex(op, M):
            raise ValueError("basis needs real data and a real operator")
        P, b, misfit, amplitudes, log_det_vk = _marginalise_basis(op, M, P, b, idx, resid, dn, w_all, use,
                                                                  B, v / unit**2)
        log_norm -= 0.5 * log_det_vk
        n_basis = B.shape[1]
    return NormalEquations(P=P, b=b, unknowns=idx, source_n=n_src, n_data=n_real, log_norm=log_norm, unit=unit,
                           backend=chosen, misfit=misfit, prior_mean=s0n, seconds=time.perf_counter() - t0,
                           amplitudes=amplitudes, n_basis=n_basis)


def _check_basis(basis: Any, basis_std: Any, d: np.ndarray) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if basis is None:
        if basis_std is not None:
            raise ValueError("basis_std is given without a basis")
        return None, None
    raw = np.asarray(basis)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"basis must be a real array, got dtype {raw.dtype}")
    B = raw.astype(np.float64).reshape(d.size, -1) if raw.size and raw.size % d.size == 0 else None
    if B is None or B.shape[1] == 0:
        raise ValueError(f"basis must have shape (n_data={d.size}, n_basis >= 1), got {raw.shape}")
    if not np.all(np.isfinite(B)):
        raise ValueError("basis contains NaN or inf values")
    if basis_std is None:
        raise ValueError("basis_std (the amplitudes' prior standard deviation) is required with a basis")
    v = np.broadcast_to(np.asarray(basis_std, dtype=np.float64), (B.shape[1],)).copy() if np.ndim(basis_std) == 0 \
        else np.asarray(basis_std, dtype=np.float64).reshape(-1)
    if v.size != B.shape[1] or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"basis_std must be finite and > 0, a scalar or one per basis column ({B.shape[1]}), "
                         f"got {basis_std!r}")
    return B, v**2


def _marginalise_basis(op: Any, M: Any, P, b: np.ndarray, idx: np.ndarray, resid: Callable, dn: np.ndarray,
                       w_all: np.ndarray, use: np.ndarray, B: np.ndarray, var: np.ndarray):
    """The Schur complement of the basis amplitudes (module docstring), normalised units.

    Returns ``P'`` (dense, symmetric), ``b'``, the profiled misfit, the amplitudes of a correction
    and ``log det(V K)``.
    """
    wB = w_all[:, None] * B  # zero on unused data
    if M is not None and sp.issparse(M):
        G = np.asarray(sp.csr_matrix(M).T @ wB)[idx]
    elif M is not None:
        G = (np.asarray(M).T @ wB)[idx]
    else:
        G = np.stack([np.asarray(op.adjoint(wB[:, k])).reshape(-1)[idx] for k in range(B.shape[1])], axis=1)
    Bu = B[use]
    sw = np.sqrt(w_all[use])
    Bw = sw[:, None] * Bu
    K = Bw.T @ Bw + np.diag(1.0 / var)
    # eigen-decomposition: the columns may be nearly degenerate (the prior keeps K positive definite,
    # the clip keeps rounding from making it indefinite)
    e, U = np.linalg.eigh(K)
    e = np.maximum(e, e.max() * 1e-14)
    Kinv = (U / e) @ U.T
    log_det_vk = float(np.sum(np.log(e)) + np.sum(np.log(var)))
    c = wB.T @ dn
    GK = G @ Kinv
    Pd = P.toarray() if sp.issparse(P) else np.triu(P) + np.triu(P, 1).T
    Pd -= GK @ G.T
    Pd = np.ascontiguousarray(0.5 * (Pd + Pd.T))
    b2 = b - GK @ c

    def amplitudes(t: np.ndarray) -> np.ndarray:
        return Kinv @ (Bw.T @ resid(t))

    def misfit(t: np.ndarray) -> float:
        r = resid(t)
        a = Kinv @ (Bw.T @ r)
        r2 = r - Bw @ a
        return float(r2 @ r2 + np.sum(a * a / var))

    return Pd, b2, misfit, amplitudes, log_det_vk


def _model_is_complex(op: Any, M: Any) -> bool:
    if M is not None:
        return bool(np.iscomplexobj(M.data if sp.issparse(M) else M))
    dtype = getattr(op, "dtype", None)  # an operator may say so (e.g. visibilities), saving an apply
    if dtype is not None:
        try:
            return np.dtype(dtype).kind == "c"
        except TypeError:
            pass
    return bool(np.iscomplexobj(op.apply(np.zeros(op.shape[1]))))


def _reached(idx: np.ndarray, what: str) -> np.ndarray:
    if idx.size == 0:
        raise ValueError(f"no source pixel is reached by a ray from the used {what}")
    return idx


def _from_matrix(op: Any, M: Any, dn: np.ndarray, w_all: np.ndarray, use: np.ndarray, backend: str, every: bool):
    """P, b, unknowns, backend and the weighted residual ``W^1/2 (d - M t)`` over the used data from an
    explicit matrix (sparse or dense); the misfit is the residual's squared norm (None returned)."""
    n_src2 = op.shape[1]
    if sp.issparse(M):
        Mu = sp.csr_matrix(M)
        Mu = Mu[use] if not use.all() else Mu  # CSR: the used rows
        reached = np.zeros(n_src2, dtype=bool)
        reached[Mu.indices] = True  # source pixels some used row touches
        nnz_bound = int(np.sum(np.diff(Mu.indptr).astype(np.int64) ** 2))
    else:
        Mu = np.asarray(M)[use]
        reached = np.any(Mu != 0, axis=0)
        nnz_bound = int(reached.sum()) ** 2
    idx = _reached(np.flatnonzero(reached), "data")
    if every:
        idx = np.arange(n_src2)
    chosen = choose_backend(backend, idx.size, nnz_bound)
    w, du = w_all[use], dn[use]
    b = np.real(Mu.conj().T @ (w * du))[idx] if np.iscomplexobj(Mu.data if sp.issparse(Mu) else Mu) \
        else (Mu.T @ (w * du))[idx]
    if hasattr(op, "normal_matrix"):
        P = op.normal_matrix(w_all, unknowns=idx, dense=chosen == "dense")
    else:
        P = _generic_normal_matrix(Mu, w, idx, dense=chosen == "dense")
    full = np.zeros(n_src2)
    sw = np.sqrt(w)

    def resid(t: np.ndarray) -> np.ndarray:
        full[idx] = t
        return (du - Mu @ full) * sw

    return P, b, idx, chosen, resid, None


def _generic_normal_matrix(Mu: Any, w: np.ndarray, idx: np.ndarray, dense: bool):
    """``Re(Mu^H diag(w) Mu)`` over the columns ``idx`` for any real/complex, sparse/dense matrix."""
    from lensinv.normal import sparse_normal_matrix

    if sp.issparse(Mu) and not np.iscomplexobj(Mu.data):
        return sparse_normal_matrix(Mu, w, idx, dense=dense)
    Mi = Mu[:, idx]
    if sp.issparse(Mi):
        P = (Mi.conj().T @ sp.diags(w) @ Mi).real.tocsr()
        return P.toarray() if dense else P
    P = np.real(Mi.conj().T @ (w[:, None] * Mi))
    return np.ascontiguousarray(P) if dense else sp.csr_matrix(P)


def _from_normal_matrix(op: Any, dn: np.ndarray, w_all: np.ndarray, backend: str, every: bool):
    """P, b, unknowns, backend, the weighted residual ``W^1/2 (d - M t)`` over the used data and the
    misfit from ``op.normal_matrix`` (no explicit matrix).

    The misfit is the quadratic form ``d^H W d - 2 b.t + t^T P t`` (P's upper triangle), so it costs
    no ``op.apply`` (for visibilities, a NUFFT per evaluation of the evidence); the residual (one
    ``op.apply``) is only needed to marginalise a basis.
    """
    P_all = op.normal_matrix(w_all, unknowns=None, dense=True)
    if sp.issparse(P_all):
        P_all = P_all.toarray()
    P_all = np.ascontiguousarray(P_all, dtype=np.float64)
    diag = np.diag(P_all)
    idx = _reached(np.flatnonzero(diag > 0), "data")
    if every:
        idx = np.arange(op.shape[1])
    chosen = choose_backend(backend, idx.size, idx.size**2)
    P = P_all.copy() if idx.size == P_all.shape[0] else np.ascontiguousarray(P_all[np.ix_(idx, idx)])
    b_all = np.asarray(op.adjoint((w_all * dn).reshape(np.shape(dn)))).reshape(-1)
    b = b_all[idx]
    dwd = float(np.sum(w_all * (dn.real**2 + dn.imag**2))) if np.iscomplexobj(dn) else float(np.sum(w_all * dn**2))
    # P_all stays intact (the factorisation takes over P); dsymv reads P_all's upper triangle
    P_upper_f = P_all.T  # Fortran view: its lower triangle is P_all's upper one
    full = np.zeros(op.shape[1])
    used = w_all > 0
    sw = np.sqrt(w_all[used])

    def resid(t: np.ndarray) -> np.ndarray:
        full[idx] = t
        return (dn[used] - np.asarray(op.apply(full)).reshape(-1)[used]) * sw

    def misfit(t: np.ndarray) -> float:
        full[idx] = t
        quad = float(full @ dsymv(1.0, P_upper_f, full, lower=1))
        return max(0.0, dwd - 2.0 * float(b @ t) + quad)

    if chosen != "dense":
        P = sp.csr_matrix(np.triu(P) + np.triu(P, 1).T)
    return P, b, idx, chosen, resid, misfit
