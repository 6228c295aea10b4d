"""Elliptical power-law mass (Tessore & Metcalf 2015), lenstronomy's ``EPL``.

Convergence ``kappa = (3 - gamma)/2 (theta_E / sqrt(q x'^2 + y'^2/q))^(gamma - 1)`` in the frame
centred on ``center`` and rotated by ``phi``. With ``t = gamma - 1``, ``b = theta_E sqrt(q)``,
``f = (1 - q)/(1 + q)``, the elliptical coordinate ``Z = q x' + i y'`` (``R = |Z|``) and
``e^{i varphi} = Z / R``, the deflection (Tessore & Metcalf 2015, eqs. 22-23) is

    alpha' = 2 b / (1 + q) (b / R)^(t - 1) Omega,
    Omega = sum_n Omega_n,  Omega_0 = e^{i varphi},
    Omega_n = -f (2n - 2 + t) / (2n + 2 - t) e^{2 i varphi} Omega_{n-1},

i.e. ``R Omega = Z 2F1(1, t/2; 2 - t/2; -f Z/Z*)``, lenstronomy's closed form. The terms shrink
like ``f^n``, so the series is summed to float64 precision with a number of terms fixed per
profile (``ln 2^-56 / ln f``), the same for every ray, which keeps the loop vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from ..validate import finite_float, positive_float
from .base import (Elliptical, MassProfile, axis_ratio, center_pair, deflection_kernel, ellipticity_to_q_phi,
                   register)

#: Smallest axis ratio: the series needs ~ln(2^-56)/ln f terms, ~1,900 at q = 0.02.
Q_MIN = 0.02
_BLOCK = 256


def _series_terms(q: float) -> int:
    f = (1.0 - q) / (1.0 + q)
    if f == 0.0:
        return 0
    return int(math.ceil(math.log(2.0 ** -56) / math.log(f))) + 2


@deflection_kernel
def epl_deflection(x, y, p, ax, ay):
    """Add the EPL deflection; ``p = [b, t, q, cos phi, sin phi, x_c, y_c, f, n_terms]``."""
    b = p[0]
    t = p[1]
    q = p[2]
    cp = p[3]
    sp = p[4]
    xc = p[5]
    yc = p[6]
    f = p[7]
    nterm = int(p[8])
    coef = np.empty(max(nterm, 1))
    for k in range(nterm):
        n = k + 1.0
        coef[k] = -f * (2.0 * n - 2.0 + t) / (2.0 * n + 2.0 - t)
    pre = 2.0 * b / (1.0 + q)
    tm1 = t - 1.0
    n = x.shape[0]
    w_re = np.empty(_BLOCK)
    w_im = np.empty(_BLOCK)
    o_re = np.empty(_BLOCK)
    o_im = np.empty(_BLOCK)
    s_re = np.empty(_BLOCK)
    s_im = np.empty(_BLOCK)
    amp = np.empty(_BLOCK)
    for lo in range(0, n, _BLOCK):
        m = min(_BLOCK, n - lo)
        for r in range(m):
            dx = x[lo + r] - xc
            dy = y[lo + r] - yc
            zr = q * (cp * dx + sp * dy)
            zi = cp * dy - sp * dx
            rad = math.sqrt(zr * zr + zi * zi)
            centre = rad == 0.0  # a ray through the centre: no deflection (symmetry)
            inv = 0.0 if centre else 1.0 / rad
            cr = 1.0 if centre else zr * inv
            ci = zi * inv
            o_re[r] = cr
            o_im[r] = ci
            s_re[r] = cr
            s_im[r] = ci
            w_re[r] = cr * cr - ci * ci
            w_im[r] = 2.0 * cr * ci
            amp[r] = 0.0 if centre else pre * math.exp(tm1 * math.log(b * inv))
        for k in range(nterm):
            c = coef[k]
            for r in range(m):
                nr = c * (w_re[r] * o_re[r] - w_im[r] * o_im[r])
                ni = c * (w_re[r] * o_im[r] + w_im[r] * o_re[r])
                o_re[r] = nr
                o_im[r] = ni
                s_re[r] += nr
                s_im[r] += ni
        for r in range(m):
            axp = amp[r] * s_re[r]
            ayp = amp[r] * s_im[r]
            ax[lo + r] += cp * axp - sp * ayp
            ay[lo + r] += sp * axp + cp * ayp


@register
@dataclass(frozen=True)
class EPL(Elliptical, MassProfile):
    """Elliptical power-law mass (Tessore & Metcalf 2015); lenstronomy's ``EPL``.

    Convergence ``kappa = (3 - gamma)/2 (theta_E / sqrt(q x'^2 + y'^2 / q))^(gamma - 1)``.
    At ``gamma = 2`` it is the :class:`SIE`.

    Parameters
    ----------
    theta_E : float
        Einstein radius in arcsec (> 0).
    gamma : float
        Logarithmic slope of the 3-D mass density, in (1, 3); 2 is isothermal.
    q : float
        Axis ratio (minor / major), in [0.02, 1]; ``q = 1`` is exact.
    phi : float
        Position angle of the major axis in radians, counter-clockwise from +x.
    center : tuple of float
        Lens centre ``(x, y)`` in arcsec.
    """

    name: ClassVar[str] = "EPL"
    lenstronomy_name: ClassVar[str] = "EPL"
    lenstronomy_aliases: ClassVar[tuple[str, ...]] = ("EPL_NUMBA",)
    kernel: ClassVar = epl_deflection

    theta_E: float
    gamma: float = 2.0
    q: float = 1.0
    phi: float = 0.0
    center: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta_E", positive_float("theta_E", self.theta_E))
        g = finite_float("gamma", self.gamma)
        if not 1.0 < g < 3.0:
            raise ValueError(f"gamma must be in (1, 3), got {self.gamma!r}")
        object.__setattr__(self, "gamma", g)
        q = axis_ratio("q", self.q)
        if q < Q_MIN:
            raise ValueError(f"q must be >= 0.02 for the EPL series, got {self.q!r}")
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "phi", finite_float("phi", self.phi))
        object.__setattr__(self, "center", center_pair(self.center))

    def packed(self) -> np.ndarray:
        q = self.q
        return np.array([self.theta_E * math.sqrt(q), self.gamma - 1.0, q, math.cos(self.phi), math.sin(self.phi),
                         self.center[0], self.center[1], (1.0 - q) / (1.0 + q), float(_series_terms(q))])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        e1, e2 = self.ellipticity
        return "EPL", {"theta_E": self.theta_E, "gamma": self.gamma, "e1": e1, "e2": e2,
                       "center_x": self.center[0], "center_y": self.center[1]}

    @classmethod
    def from_lenstronomy(cls, name: str, kwargs: Mapping[str, float]) -> "EPL":
        q, phi = ellipticity_to_q_phi(kwargs["e1"], kwargs["e2"], name)
        return cls(theta_E=kwargs["theta_E"], gamma=kwargs["gamma"], q=q, phi=phi,
                   center=(kwargs.get("center_x", 0.0), kwargs.get("center_y", 0.0)))
