"""The vectorisable atan/atanh used by the deflection kernel, against libm and mpmath."""

import math

import numba as nb
import numpy as np
import pytest

from lensinv._vmath import JIT, atan_ratio, atanh_ratio


@nb.njit(**JIT)
def _atan_all(n, d, out):
    for i in range(n.shape[0]):
        out[i] = atan_ratio(n[i], d[i])


@nb.njit(**JIT)
def _atanh_all(n, d, out):
    for i in range(n.shape[0]):
        out[i] = atanh_ratio(n[i], d[i])


def _ulp_error(got, ref):
    return np.max(np.abs(got - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(float).tiny)))


def test_atan_ratio_within_a_few_ulp(rng):
    d = rng.uniform(1, 2, 30000)
    n = d * np.concatenate([rng.normal(size=29990) * np.exp(rng.normal(size=29990) * 5),
                            [0.0, 0.66, 0.6600000000000001, 2.414213562373095, 2.4142135623730954, 1e300, -1e300,
                             1e-300, -0.5, 3.0]])
    out = np.empty_like(n)
    _atan_all(n, d, out)
    assert _ulp_error(out, np.arctan2(n, d)) <= 4.0
    _atan_all(np.array([np.inf, -np.inf]), np.ones(2), out[:2])
    assert out[0] == math.pi / 2 and out[1] == -math.pi / 2


def test_atanh_ratio_within_a_few_ulp(rng):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    u = np.concatenate([rng.uniform(-1, 1, 1500), 1 - 10 ** rng.uniform(-15, 0, 500),
                        -(1 - 10 ** rng.uniform(-15, 0, 500)), 10 ** rng.uniform(-300, 0, 500),
                        [0.0, 0.17157287525380990, -0.1715728752538100, 0.1715728752538101]])
    d = rng.uniform(1, 2, u.size)
    n = u * d
    out = np.empty_like(u)
    _atanh_all(n, d, out)
    ref = np.array([float(mpmath.atanh(mpmath.mpf(float(a)) / mpmath.mpf(float(b)))) for a, b in zip(n, d)])
    assert _ulp_error(out, ref) <= 8.0
