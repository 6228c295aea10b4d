"""Singular isothermal ellipsoid (Kormann et al. 1994), lenstronomy's ``SIE``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from ..validate import finite_float, positive_float
from .._vmath import _bits, _from_bits, atan_ratio, atanh_ratio
from .base import (Elliptical, MassProfile, axis_ratio, center_pair, deflection_kernel, ellipticity_to_q_phi,
                   register)


@deflection_kernel
def sie_deflection(x, y, p, ax, ay):
    """Add the SIE deflection; ``p = [b, q, cos phi, sin phi, x_c, y_c, sqrt(1 - q^2)]``, ``b = theta_E sqrt(q)``.

    The loop over rays is branch-free so that it vectorises.
    """
    b = p[0]
    q = p[1]
    cp = p[2]
    sp = p[3]
    xc = p[4]
    yc = p[5]
    e = p[6]
    q2 = q * q
    n = x.shape[0]
    if e > 0.0:
        be = b / e
        for r in range(n):
            dx = x[r] - xc
            dy = y[r] - yc
            xp = cp * dx + sp * dy
            yp = cp * dy - sp * dx
            psi = math.sqrt(q2 * xp * xp + yp * yp)
            # the SIE deflection depends on direction only: rescale by a power of two so psi is in [1, 2)
            scale = _from_bits((2046 - ((_bits(psi) >> 52) & 0x7FF)) << 52)
            ps = psi * scale
            ex = e * xp * scale
            ey = e * yp * scale
            centre = psi == 0.0  # a ray through the centre: no deflection
            axp = 0.0 if centre else be * atan_ratio(ex, ps)
            ayp = 0.0 if centre else be * atanh_ratio(ey, ps)
            ax[r] += cp * axp - sp * ayp
            ay[r] += sp * axp + cp * ayp
    else:  # q == 1: the SIS limit, exact
        for r in range(n):
            dx = x[r] - xc
            dy = y[r] - yc
            rad = math.sqrt(dx * dx + dy * dy)
            inv = b / rad if rad > 0.0 else 0.0
            ax[r] += dx * inv
            ay[r] += dy * inv


@register
@dataclass(frozen=True)
class SIE(Elliptical, MassProfile):
    """Singular isothermal ellipsoid (Kormann et al. 1994).

    Convergence ``kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q))`` in the frame
    centred on ``center`` and rotated by ``phi``.

    Parameters
    ----------
    theta_E : float
        Einstein radius in arcsec (> 0).
    q : float
        Axis ratio (minor / major), in (0, 1]. ``q = 1`` is the singular
        isothermal sphere, handled exactly.
    phi : float
        Position angle of the major axis in radians, counter-clockwise from +x.
    center : tuple of float
        Lens centre ``(x, y)`` in arcsec.
    """

    name: ClassVar[str] = "SIE"
    lenstronomy_name: ClassVar[str] = "SIE"
    lenstronomy_aliases: ClassVar[tuple[str, ...]] = ("SIS",)
    kernel: ClassVar = sie_deflection

    theta_E: float
    q: float = 1.0
    phi: float = 0.0
    center: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta_E", positive_float("theta_E", self.theta_E))
        object.__setattr__(self, "q", axis_ratio("q", self.q))
        object.__setattr__(self, "phi", finite_float("phi", self.phi))
        object.__setattr__(self, "center", center_pair(self.center))

    def packed(self) -> np.ndarray:
        return np.array([self.theta_E * math.sqrt(self.q), self.q, math.cos(self.phi), math.sin(self.phi),
                         self.center[0], self.center[1], math.sqrt(max(1.0 - self.q * self.q, 0.0))])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        e1, e2 = self.ellipticity
        return "SIE", {"theta_E": self.theta_E, "e1": e1, "e2": e2,
                       "center_x": self.center[0], "center_y": self.center[1]}

    @classmethod
    def from_lenstronomy(cls, name: str, kwargs: Mapping[str, float]) -> "SIE":
        center = (kwargs.get("center_x", 0.0), kwargs.get("center_y", 0.0))
        if name == "SIS":
            return cls(theta_E=kwargs["theta_E"], center=center)
        q, phi = ellipticity_to_q_phi(kwargs["e1"], kwargs["e2"], name)
        return cls(theta_E=kwargs["theta_E"], q=q, phi=phi, center=center)
