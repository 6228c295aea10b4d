"""The base class of mass profiles, and the registry that ``Lens``, the kernels and the data sets use.

A profile is a frozen dataclass deriving from :class:`MassProfile`. It says

- ``name``: the registry key (also what data sets store), e.g. ``"SIE"``;
- ``lenstronomy_name`` (and optional ``lenstronomy_aliases``): how lenstronomy calls it;
- ``kernel``: a Numba function with :data:`DEFLECTION_SIGNATURE`,
  ``kernel(x, y, p, ax, ay)``, which *adds* the deflection (arcsec) at the flat
  float64 positions ``x, y`` to ``ax, ay``; ``p`` is the row :meth:`MassProfile.packed`
  returns. The operator kernels call it through a function pointer, so they
  never need to know the profile;
- ``params()`` / ``from_params()``: the flat parameters (floats, arcsec and radians)
  that data sets store and ``fit.json`` reports;
- ``to_lenstronomy()`` / ``from_lenstronomy()``: lenstronomy's ``kwargs``.

``@register`` adds the class to the registry. See ``docs/extending.md``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar, Mapping

import numba as nb
import numpy as np
from numba import types

from ..validate import finite_float

#: The signature every profile kernel has: ``(x, y, params, ax, ay) -> None``, all flat C-contiguous float64
#: (``params`` read-only).
DEFLECTION_SIGNATURE = types.void(types.float64[::1], types.float64[::1],
                                  types.Array(types.float64, 1, "C", readonly=True),
                                  types.float64[::1], types.float64[::1])

#: Numba options for profile kernels (float64 throughout; cached on disk).
KERNEL_JIT = dict(cache=True, fastmath={"contract", "nsz", "arcp"}, error_model="numpy")

try:  # the first-class function type is marked experimental in Numba, but stable since 0.53
    from numba.core.errors import NumbaExperimentalFeatureWarning
    warnings.filterwarnings("ignore", category=NumbaExperimentalFeatureWarning)
except ImportError:  # pragma: no cover
    pass


def deflection_kernel(func):
    """Decorator: compile ``func(x, y, p, ax, ay)`` as a profile kernel (see module docstring)."""
    return nb.njit(DEFLECTION_SIGNATURE, **KERNEL_JIT)(func)


class MassProfile:
    """Base class of mass profiles (subclasses are frozen dataclasses; see the module docstring)."""

    name: ClassVar[str]
    lenstronomy_name: ClassVar[str]
    lenstronomy_aliases: ClassVar[tuple[str, ...]] = ()
    kernel: ClassVar[Any]

    def packed(self) -> np.ndarray:
        """The kernel's parameter row (float64, 1-D; internal)."""
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """The parameters as a flat dict of floats (``center`` becomes ``center_x``, ``center_y``)."""
        out: dict[str, float] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "center":
                out["center_x"], out["center_y"] = float(v[0]), float(v[1])
            else:
                out[f.name] = float(v)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, float]) -> "MassProfile":
        """Inverse of :meth:`params`; unknown keys raise ``ValueError``."""
        kw = dict(params)
        if "center_x" in kw or "center_y" in kw:
            kw["center"] = (kw.pop("center_x", 0.0), kw.pop("center_y", 0.0))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"expected {', '.join(sorted(cls.param_names()))}")
        return cls(**kw)

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Names of :meth:`params`' keys."""
        out: list[str] = []
        for f in dataclasses.fields(cls):
            out += ["center_x", "center_y"] if f.name == "center" else [f.name]
        return tuple(out)

    def to_lenstronomy(self) -> tuple[str, dict[str, float]]:
        """``(model_name, kwargs)`` for lenstronomy's ``LensModel``."""
        raise NotImplementedError

    @classmethod
    def from_lenstronomy(cls, name: str, kwargs: Mapping[str, float]) -> "MassProfile":
        """Build from lenstronomy's ``(model_name, kwargs)`` (``name`` is one of this class's names)."""
        raise NotImplementedError

    def deflection(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This profile's deflection (arcsec) at positions ``x, y`` (arcsec, any equal shape)."""
        from .lens import Lens

        return Lens(self).deflection(x, y)


class Elliptical:
    """Mixin of profiles with an axis ratio ``q`` and position angle ``phi``: lenstronomy's ``(e1, e2)``."""

    @property
    def ellipticity(self) -> tuple[float, float]:
        """lenstronomy's ``(e1, e2) = (1-q)/(1+q) (cos 2phi, sin 2phi)``."""
        return q_phi_to_ellipticity(self.q, self.phi)


_REGISTRY: dict[str, type[MassProfile]] = {}
_LENSTRONOMY: dict[str, type[MassProfile]] = {}


def register(cls: type[MassProfile]) -> type[MassProfile]:
    """Class decorator: add a profile to the registry (by ``name`` and its lenstronomy names)."""
    if not (isinstance(cls, type) and issubclass(cls, MassProfile)):
        raise TypeError(f"register expects a MassProfile subclass, got {cls!r}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a (frozen) dataclass")
    for attr in ("name", "lenstronomy_name", "kernel"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define {attr}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a mass profile named {cls.name!r} is registered already ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    for ln in (cls.lenstronomy_name, *cls.lenstronomy_aliases):
        _LENSTRONOMY[ln] = cls
    return cls


def profiles() -> dict[str, type[MassProfile]]:
    """The registered profiles, by name."""
    return dict(_REGISTRY)


def profile_class(name: str) -> type[MassProfile]:
    """The registered profile called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mass profile {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def lenstronomy_class(name: str) -> type[MassProfile]:
    """The registered profile that reads lenstronomy's model ``name``."""
    try:
        return _LENSTRONOMY[name]
    except (KeyError, TypeError):
        raise ValueError(f"lens model {name!r} is not supported; supported: "
                         f"{', '.join(sorted(_LENSTRONOMY))}") from None


# --------------------------------------------------------------------------- shared parameter checks

def axis_ratio(name: str, value: float) -> float:
    """``value`` as a float in (0, 1], or ``ValueError`` naming ``name``."""
    q = finite_float(name, value)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return q


#: Largest |position| (arcsec) of a centre or a ray: far beyond any lens, and safe from overflow
#: in the profiles' squares (1e100^2 is well inside float64).
MAX_POSITION = 1e100


def center_pair(value: Any) -> tuple[float, float]:
    """A centre ``(x, y)`` of two finite floats within ``MAX_POSITION`` arcsec, or ``ValueError``."""
    try:
        cx, cy = value
    except (TypeError, ValueError):
        raise ValueError(f"center must be a pair (x, y) of finite numbers, got {value!r}") from None
    out = finite_float("center[0]", cx), finite_float("center[1]", cy)
    if max(abs(out[0]), abs(out[1])) > MAX_POSITION:
        raise ValueError(f"center must be within {MAX_POSITION:g} arcsec of the origin, got {value!r}")
    return out


def ellipticity_to_q_phi(e1: float, e2: float, model: str) -> tuple[float, float]:
    """lenstronomy's ``(e1, e2)`` -> ``(q, phi)`` with ``|e| = (1-q)/(1+q)``."""
    e1, e2 = finite_float("e1", e1), finite_float("e2", e2)
    e = math.hypot(e1, e2)
    if e >= 1.0:
        raise ValueError(f"{model} ellipticity |e| = {e!r} must be < 1")
    return (1.0 - e) / (1.0 + e), 0.5 * math.atan2(e2, e1)


def q_phi_to_ellipticity(q: float, phi: float) -> tuple[float, float]:
    """``(q, phi)`` -> lenstronomy's ``(e1, e2) = (1-q)/(1+q) (cos 2phi, sin 2phi)``."""
    e = (1.0 - q) / (1.0 + q)
    return e * math.cos(2.0 * phi), e * math.sin(2.0 * phi)
