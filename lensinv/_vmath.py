"""Branch-free float64 ``atan(n/d)`` and ``atanh(n/d)`` that LLVM can vectorise.

Numba calls libm for ``math.atan``/``math.atanh`` one element at a time; these
versions are plain arithmetic with selects, so loops over arrays compile to
SIMD code, and each takes its argument as a ratio so that it costs a single
division. Both are within a few ulp; tests compare them against ``math`` and
mpmath.

- ``atan_ratio``: Cephes' argument reduction (0, tan(pi/8), tan(3pi/8)) and
  its degree 4/5 rational approximation, written homogeneously in ``(n, d)``.
- ``atanh_ratio``: for ``|n/d| <= 3 - 2 sqrt 2`` the Taylor series; otherwise
  ``0.5 log((d+n)/(d-n))`` with both terms split into binary exponent and
  mantissa (bit manipulation), reducing to ``k ln2 / 2 + atanh(s)``,
  ``|s| <= 3 - 2 sqrt 2``.
"""

from __future__ import annotations

import numba as nb
from numba.core import types
from numba.extending import intrinsic

FASTMATH = {"contract", "nsz", "arcp"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")

_P0, _P1, _P2, _P3, _P4 = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
                           -1.228866684490136173410e2, -6.485021904942025371773e1)
_Q0, _Q1, _Q2, _Q3, _Q4 = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
                           4.853903996359136964868e2, 1.945506571482613964425e2)
_T3P8 = 2.41421356237309504880  # tan(3 pi / 8)
_MOREBITS = 6.123233995736765886130e-17  # pi/2 - float(pi/2)
_PIO2 = 1.5707963267948966
_PIO4 = 0.7853981633974483
_S_MAX = 0.17157287525380990  # 3 - 2 sqrt(2): |s| bound after reduction to [1/sqrt2, sqrt2]
_SQRT2 = 1.4142135623730951
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_MANT = 0x000FFFFFFFFFFFFF
_ONE_EXP = 0x3FF0000000000000


@intrinsic
def _bits(typingctx, x):
    """Reinterpret a float64 as int64 (an LLVM bitcast)."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, n):
    """Reinterpret an int64 as float64 (an LLVM bitcast)."""
    if n != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@nb.njit(inline="always", **JIT)
def _atanh_series(s):
    """atanh(s) for |s| <= 3 - 2 sqrt 2 (Taylor series to 2e-17 relative)."""
    z = s * s
    p = 1.0 / 23.0
    p = p * z + 1.0 / 21.0
    p = p * z + 1.0 / 19.0
    p = p * z + 1.0 / 17.0
    p = p * z + 1.0 / 15.0
    p = p * z + 1.0 / 13.0
    p = p * z + 1.0 / 11.0
    p = p * z + 1.0 / 9.0
    p = p * z + 1.0 / 7.0
    p = p * z + 1.0 / 5.0
    p = p * z + 1.0 / 3.0
    return s + s * z * p


@nb.njit(inline="always", **JIT)
def atan_ratio(n, d):
    """``atan(n / d)`` for ``d > 0`` with a single division.

    The Cephes reduction and rational approximation are written homogeneously
    in ``(n, d)``. ``n`` and ``d`` should be of moderate magnitude (callers
    normalise ``d`` to [1, 2)); ``|n / d|`` is capped at 1e20, where atan is
    pi/2 to double precision.
    """
    a = min(abs(n), 1e20 * d)
    big = a > _T3P8 * d
    mid = a > 0.66 * d
    num = (-d if big else a - d) if mid else a
    den = (a if big else a + d) if mid else d
    y0 = (_PIO2 if big else _PIO4) if mid else 0.0
    mb = (_MOREBITS if big else 0.5 * _MOREBITS) if mid else 0.0
    n2 = num * num
    d2 = den * den
    d4 = d2 * d2
    pt = (((_P0 * n2 + _P1 * d2) * n2 + _P2 * d4) * n2 + _P3 * d4 * d2) * n2 + _P4 * d4 * d4
    qt = ((((n2 + _Q0 * d2) * n2 + _Q1 * d4) * n2 + _Q2 * d4 * d2) * n2 + _Q3 * d4 * d4) * n2 + _Q4 * d4 * d4 * d2
    r = y0 + (num * (qt + n2 * pt) / (den * qt) + mb)
    return r if n >= 0.0 else -r


@nb.njit(inline="always", **JIT)
def atanh_ratio(n, d):
    """``atanh(n / d)`` for ``|n| < d`` with a single division.

    ``0.5 log((d + n) / (d - n))`` with both terms split into binary exponent
    and mantissa (so no division forms the ratio); for ``|n / d| <= 3 - 2 sqrt 2``
    the series runs on ``n / d`` itself, keeping full relative precision near 0.
    ``d + n`` and ``d - n`` must be normal numbers.
    """
    small = abs(n) <= _S_MAX * d
    bn = _bits(d + n)
    bd = _bits(d - n)
    k = ((bn >> 52) & 0x7FF) - ((bd >> 52) & 0x7FF)
    mn = _from_bits((bn & _MANT) | _ONE_EXP)
    md = _from_bits((bd & _MANT) | _ONE_EXP)
    hi = mn > _SQRT2 * md
    lo = md > _SQRT2 * mn
    md = 2.0 * md if hi else md
    mn = 2.0 * mn if lo else mn
    k = k + 1 if hi else (k - 1 if lo else k)
    s = (n if small else mn - md) / (d if small else mn + md)
    kf = 0.0 if small else 0.5 * float(k)
    return kf * _LN2_HI + (_atanh_series(s) + kf * _LN2_LO)
