"""A constant deflection, lenstronomy's ``SHIFT``.

A uniform deflection moves the whole source plane and changes nothing observable (the
source position is not measurable from the images alone). It is useful to centre a finite
source grid on where the source is: ``baselines.lens_fit`` adds one so that its coarse
source grid sits on each candidate lens centre instead of the image's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from ..validate import finite_float
from .base import MassProfile, deflection_kernel, register


@deflection_kernel
def shift_deflection(x, y, p, ax, ay):
    """Add the constant ``(alpha_x, alpha_y)``; ``p = [alpha_x, alpha_y]``."""
    a = p[0]
    b = p[1]
    for r in range(x.shape[0]):
        ax[r] += a
        ay[r] += b


@register
@dataclass(frozen=True)
class Shift(MassProfile):
    """A constant deflection (arcsec): traced positions move by ``-(alpha_x, alpha_y)``.

    Parameters
    ----------
    alpha_x, alpha_y : float
        Deflection in arcsec (finite).
    """

    name: ClassVar[str] = "SHIFT"
    lenstronomy_name: ClassVar[str] = "SHIFT"
    kernel: ClassVar = shift_deflection

    alpha_x: float = 0.0
    alpha_y: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha_x", finite_float("alpha_x", self.alpha_x))
        object.__setattr__(self, "alpha_y", finite_float("alpha_y", self.alpha_y))

    def packed(self) -> np.ndarray:
        return np.array([self.alpha_x, self.alpha_y])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        return "SHIFT", {"alpha_x": self.alpha_x, "alpha_y": self.alpha_y}

    @classmethod
    def from_lenstronomy(cls, name: str, kwargs: Mapping[str, float]) -> "Shift":
        return cls(alpha_x=kwargs["alpha_x"], alpha_y=kwargs["alpha_y"])
