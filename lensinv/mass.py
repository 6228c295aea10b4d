"""Mass models: the singular isothermal ellipsoid, external shear, and their sum.

Conventions are lenstronomy's ``SIE`` and ``SHEAR`` (DESIGN.md), so results can
be checked against it and models moved between the two codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from . import _kernels
from ._validate import finite_float, positive_float


@dataclass(frozen=True)
class SIE:
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

    theta_E: float
    q: float = 1.0
    phi: float = 0.0
    center: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta_E", positive_float("theta_E", self.theta_E))
        q = finite_float("q", self.q)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {self.q!r}")
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "phi", finite_float("phi", self.phi))
        try:
            cx, cy = self.center
        except (TypeError, ValueError):
            raise ValueError(f"center must be a pair (x, y) of finite numbers, got {self.center!r}") from None
        object.__setattr__(self, "center", (finite_float("center[0]", cx), finite_float("center[1]", cy)))

    @property
    def ellipticity(self) -> tuple[float, float]:
        """lenstronomy's ``(e1, e2) = (1-q)/(1+q) (cos 2phi, sin 2phi)``."""
        e = (1.0 - self.q) / (1.0 + self.q)
        return e * math.cos(2.0 * self.phi), e * math.sin(2.0 * self.phi)

    def packed(self) -> np.ndarray:
        """Row of the kernel parameter table (internal)."""
        return np.array([
            _kernels.SIE_ROW, self.theta_E * math.sqrt(self.q), self.q, math.cos(self.phi),
            math.sin(self.phi), self.center[0], self.center[1], math.sqrt(max(1.0 - self.q * self.q, 0.0)),
        ])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        e1, e2 = self.ellipticity
        return "SIE", {"theta_E": self.theta_E, "e1": e1, "e2": e2,
                       "center_x": self.center[0], "center_y": self.center[1]}


@dataclass(frozen=True)
class ExternalShear:
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
        return np.array([_kernels.SHEAR_ROW, self.gamma1, self.gamma2, 0.0, 0.0, 0.0, 0.0, 0.0])

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        return "SHEAR", {"gamma1": self.gamma1, "gamma2": self.gamma2, "ra_0": 0.0, "dec_0": 0.0}


Component = Union[SIE, ExternalShear]


class Lens:
    """A lens: the sum of its components' deflections.

    Parameters
    ----------
    *components : SIE or ExternalShear
        The mass components, deflections added.

    Examples
    --------
    >>> lens = Lens(SIE(theta_E=1.2, q=0.7, phi=0.3), ExternalShear(gamma=0.05, phi=1.0))
    >>> bx, by = lens.raytrace(np.array([1.0]), np.array([0.5]))
    """

    __slots__ = ("components", "_packed")

    def __init__(self, *components: Component) -> None:
        for c in components:
            if not isinstance(c, (SIE, ExternalShear)):
                raise ValueError(f"components must be SIE or ExternalShear instances, got {c!r}")
        self.components: tuple[Component, ...] = tuple(components)
        packed = [c.packed() for c in self.components]
        self._packed = np.array(packed) if packed else np.zeros((0, _kernels.N_PACKED))
        self._packed.setflags(write=False)

    def __repr__(self) -> str:
        return f"Lens({', '.join(repr(c) for c in self.components)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lens) and self.components == other.components

    def __hash__(self) -> int:
        return hash(self.components)

    @property
    def packed(self) -> np.ndarray:
        """The components as the kernels' float64 parameter table (internal, read-only)."""
        return self._packed

    def deflection(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Deflection angles at image-plane positions.

        Parameters
        ----------
        x, y : array_like
            Image-plane positions in arcsec, any (equal) shape.

        Returns
        -------
        alpha_x, alpha_y : ndarray
            Deflection in arcsec, float64, same shape as ``x``.
        """
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        if xa.shape != ya.shape:
            raise ValueError(f"x and y must have the same shape, got {xa.shape} and {ya.shape}")
        ax, ay = _kernels.deflection_kernel(np.ascontiguousarray(xa).reshape(-1),
                                            np.ascontiguousarray(ya).reshape(-1), self._packed)
        return ax.reshape(xa.shape), ay.reshape(xa.shape)

    def raytrace(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source-plane positions ``(x - alpha_x, y - alpha_y)`` in arcsec (lens equation)."""
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        ax, ay = self.deflection(xa, ya)
        return xa - ax, ya - ay

    def to_lenstronomy(self) -> tuple[list[str], list[dict[str, float]]]:
        """``(lens_model_list, kwargs_lens)`` for lenstronomy's ``LensModel``."""
        pairs = [c.to_lenstronomy() for c in self.components]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @classmethod
    def from_lenstronomy(cls, model_list: list[str], kwargs_list: list[dict[str, float]]) -> "Lens":
        """Build from lenstronomy's ``(lens_model_list, kwargs_lens)``.

        Supported models: ``SIE``, ``SIS``, ``SHEAR`` and ``SHEAR_GAMMA_PSI``
        (shears about the origin only).
        """
        if len(model_list) != len(kwargs_list):
            raise ValueError(f"model_list and kwargs_list differ in length: {len(model_list)} vs {len(kwargs_list)}")
        comps: list[Component] = []
        for name, kw in zip(model_list, kwargs_list):
            if name == "SIE":
                e1, e2 = finite_float("e1", kw["e1"]), finite_float("e2", kw["e2"])
                e = math.hypot(e1, e2)
                if e >= 1.0:
                    raise ValueError(f"SIE ellipticity |e| = {e!r} must be < 1")
                comps.append(SIE(theta_E=kw["theta_E"], q=(1.0 - e) / (1.0 + e), phi=0.5 * math.atan2(e2, e1),
                                 center=(kw.get("center_x", 0.0), kw.get("center_y", 0.0))))
            elif name == "SIS":
                comps.append(SIE(theta_E=kw["theta_E"], center=(kw.get("center_x", 0.0), kw.get("center_y", 0.0))))
            elif name in ("SHEAR", "SHEAR_GAMMA_PSI"):
                for key in ("ra_0", "dec_0"):
                    if finite_float(key, kw.get(key, 0.0)) != 0.0:
                        raise ValueError(f"{name} with {key}={kw[key]!r}: only shear about the origin is supported")
                if name == "SHEAR":
                    comps.append(ExternalShear.from_components(kw["gamma1"], kw["gamma2"]))
                else:
                    comps.append(ExternalShear(gamma=kw["gamma_ext"], phi=kw["psi_ext"]))
            else:
                raise ValueError(f"lens model {name!r} is not supported (SIE, SIS, SHEAR, SHEAR_GAMMA_PSI)")
        return cls(*comps)
