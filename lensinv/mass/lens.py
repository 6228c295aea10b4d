"""A lens: the sum of its mass profiles' deflections."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .. import _kernels
from .base import MAX_POSITION, MassProfile, deflection_kernel, lenstronomy_class, profile_class


@deflection_kernel
def _no_deflection(x, y, p, ax, ay):  # pragma: no cover - trivial
    """Kernel of a lens with no components (keeps the kernels' argument types fixed)."""
    return


class Lens:
    """A lens: the sum of its components' deflections.

    Parameters
    ----------
    *components : MassProfile
        The mass components (any registered profile: ``SIE``, ``EPL``, ``ExternalShear``, ...),
        deflections added.

    Examples
    --------
    >>> lens = Lens(SIE(theta_E=1.2, q=0.7, phi=0.3), ExternalShear(gamma=0.05, phi=1.0))
    >>> bx, by = lens.raytrace(np.array([1.0]), np.array([0.5]))
    """

    __slots__ = ("components", "_kernels", "_params")

    def __init__(self, *components: MassProfile) -> None:
        for c in components:
            if not isinstance(c, MassProfile):
                raise ValueError(f"components must be mass profiles (SIE, EPL, ExternalShear, ...), got {c!r}")
        self.components: tuple[MassProfile, ...] = tuple(components)
        rows = [np.asarray(c.packed(), dtype=np.float64).reshape(-1) for c in self.components] or [np.zeros(1)]
        width = max(r.size for r in rows)
        params = np.zeros((len(rows), width))
        for k, r in enumerate(rows):
            params[k, :r.size] = r
        params.setflags(write=False)
        self._params = params
        self._kernels = tuple(type(c).kernel for c in self.components) or (_no_deflection,)

    def __repr__(self) -> str:
        return f"Lens({', '.join(repr(c) for c in self.components)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lens) and self.components == other.components

    def __hash__(self) -> int:
        return hash(self.components)

    @property
    def kernel_args(self) -> tuple[tuple[Any, ...], np.ndarray]:
        """``(kernels, params)`` for the operator kernels (internal): one profile kernel and one
        parameter row per component."""
        return self._kernels, self._params

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
        for name, a in (("x", xa), ("y", ya)):
            if a.size and not (np.all(np.isfinite(a)) and float(np.max(np.abs(a))) <= MAX_POSITION):
                raise ValueError(f"{name} must be finite positions within {MAX_POSITION:g} arcsec")
        flat = [np.require(a.reshape(-1), np.float64, ["C", "W"]) for a in (xa, ya)]
        ax, ay = _kernels.deflection_kernel(flat[0], flat[1], self._kernels, self._params)
        return ax.reshape(xa.shape), ay.reshape(xa.shape)

    def raytrace(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source-plane positions ``(x - alpha_x, y - alpha_y)`` in arcsec (lens equation)."""
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        ax, ay = self.deflection(xa, ya)
        return xa - ax, ya - ay

    # ------------------------------------------------------------------ serialisation

    def to_records(self) -> list[tuple[str, dict[str, float]]]:
        """The components as ``[(profile name, parameters), ...]`` (what data sets store)."""
        return [(c.name, c.params()) for c in self.components]

    @classmethod
    def from_records(cls, records: Sequence[tuple[str, Mapping[str, float]]]) -> "Lens":
        """Inverse of :meth:`to_records`; an unknown profile name raises ``ValueError``."""
        return cls(*(profile_class(name).from_params(params) for name, params in records))

    def to_lenstronomy(self) -> tuple[list[str], list[dict[str, float]]]:
        """``(lens_model_list, kwargs_lens)`` for lenstronomy's ``LensModel``."""
        pairs = [c.to_lenstronomy() for c in self.components]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @classmethod
    def from_lenstronomy(cls, model_list: Sequence[str], kwargs_list: Sequence[Mapping[str, float]]) -> "Lens":
        """Build from lenstronomy's ``(lens_model_list, kwargs_lens)``.

        Supported: every registered profile's lenstronomy names (``SIE``, ``SIS``, ``EPL``, ``SHEAR``,
        ``SHEAR_GAMMA_PSI``; shears about the origin only).
        """
        if len(model_list) != len(kwargs_list):
            raise ValueError(f"model_list and kwargs_list differ in length: {len(model_list)} vs {len(kwargs_list)}")
        comps = []
        for name, kw in zip(model_list, kwargs_list):
            try:
                comps.append(lenstronomy_class(name).from_lenstronomy(name, kw))
            except KeyError as exc:
                raise ValueError(f"lenstronomy {name} kwargs lack {exc.args[0]!r}") from None
        return cls(*comps)
