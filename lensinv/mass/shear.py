"""External shear about the origin, lenstronomy's ``SHEAR`` (and ``SHEAR_GAMMA_PSI``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from ..validate import finite_float
from .base import MassProfile, deflection_kernel, register


@deflection_kernel
def shear_deflection(x, y, p, ax, ay):
    """Add ``(gamma1 x + gamma2 y, gamma2 x - gamma1 y)``; ``p = [gamma1, gamma2]``."""
    g1 = p[0]
    g2 = p[1]
    for r in range(x.shape[0]):
        ax[r] += g1 * x[r] + g2 * y[r]
        ay[r] += g2 * x[r] - g1 * y[r]


@register
@dataclass(frozen=True)
class ExternalShear(MassProfile):
    """External shear about the origin.

    ``gamma1 = gamma cos 2phi``, ``gamma2 = gamma sin 2phi``; deflection
    ``(gamma1 x + gamma2 y, gamma2 x - gamma1 y)``.

    Parameters
    ----------
    gamma : float
        Shear magnitude (dimensionless, >= 0).
    phi : float
        Shear angle in radians.
    """

    name: ClassVar[str] = "SHEAR"
    lenstronomy_name: ClassVar[str] = "SHEAR"
    lenstronomy_aliases: ClassVar[tuple[str, ...]] = ("SHEAR_GAMMA_PSI",)
    kernel: ClassVar = shear_deflection

    gamma: float = 0.0
    phi: float = 0.0

    def __post_init__(self) -> None:
        g = finite_float("gamma", self.gamma)
        if g < 0.0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma!r}")
        object.__setattr__(self, "gamma", g)
        object.__setattr__(self, "phi", finite_float("phi", self.phi))

    @property
    def gamma1(self) -> float:
        return self.gamma * math.cos(2.0 * self.phi)

    @property
    def gamma2(self) -> float:
        return self.gamma * math.sin(2.0 * self.phi)

    @classmethod
    def from_components(cls, gamma1: float, gamma2: float) -> "ExternalShear":
        """Build from the Cartesian components ``(gamma1, gamma2)``."""
        g1 = finite_float("gamma1", gamma1)
        g2 = finite_float("gamma2", gamma2)
        return cls(gamma=math.hypot(g1, g2), phi=0.5 * math.atan2(g2, g1))

    def packed(self) -> np.ndarray:
        return np.array([self.gamma1, self.gamma2])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        return "SHEAR", {"gamma1": self.gamma1, "gamma2": self.gamma2, "ra_0": 0.0, "dec_0": 0.0}

    @classmethod
    def from_lenstronomy(cls, name: str, kwargs: Mapping[str, float]) -> "ExternalShear":
        for key in ("ra_0", "dec_0"):
            if finite_float(key, kwargs.get(key, 0.0)) != 0.0:
                raise ValueError(f"{name} with {key}={kwargs[key]!r}: only shear about the origin is supported")
        if name == "SHEAR":
            return cls.from_components(kwargs["gamma1"], kwargs["gamma2"])
        return cls(gamma=kwargs["gamma_ext"], phi=kwargs["psi_ext"])
