"""The vectorisable atan/atanh used by the deflection kernel, against libm."""

import math

import numba as nb
import numpy as np

from lensinv._vmath import JIT, atan, atanh


@nb.njit(**JIT)
def _atan_all(x, out):
    for i in range(x.shape[0]):
        out[i] = atan(x[i])


@nb.njit(**JIT)
def _atanh_all(x, out):
    for i in range(x.shape[0]):
        out[i] = atanh(x[i])


def _ulp_error(got, ref):
    return np.max(np.abs(got - ref) / np.spacing(np.maximum(np.abs(ref), np.finfo(float).tiny)))


def test_atan_within_one_ulp(rng):
    x = np.concatenate([rng.normal(size=20000) * np.exp(rng.normal(size=20000) * 5),
                        [0.0, 0.66, 0.6600000000000001, 2.414213562373095, 2.4142135623730954, 1e300, -1e300]])
    out = np.empty_like(x)
    _atan_all(x, out)
    assert _ulp_error(out, np.array([math.atan(v) for v in x])) <= 1.0
    _atan_all(np.array([np.inf, -np.inf]), out[:2])
    assert out[0] == math.pi / 2 and out[1] == -math.pi / 2


def test_atanh_within_a_few_ulp(rng):
    u = np.concatenate([rng.uniform(-1, 1, 20000), 1 - 10 ** rng.uniform(-15, 0, 5000),
                        -(1 - 10 ** rng.uniform(-15, 0, 5000)), 10 ** rng.uniform(-300, 0, 5000),
                        [0.0, 0.17157287525380990, -0.1715728752538100]])
    out = np.empty_like(u)
    _atanh_all(u, out)
    assert _ulp_error(out, np.array([math.atanh(v) for v in u])) <= 8.0
