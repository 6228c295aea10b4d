"""Regular pixel grids on the image and source planes.

Convention (DESIGN.md): a square grid of ``n`` pixels of size ``delta``
(arcsec), centred on the origin. Pixel ``(i, j)`` (row ``i``, column ``j``)
has its centre at ``x = (j - (n - 1) / 2) * delta``,
``y = (i - (n - 1) / 2) * delta``; arrays are flattened row-major,
``k = i * n + j``. Plot with ``origin="lower"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validate import int_at_least, positive_float


class _Grid:
    n: int

    @property
    def delta(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Number of pixels, ``n * n``."""
        return self.n * self.n

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(n, n)``."""
        return (self.n, self.n)

    @property
    def axis(self) -> np.ndarray:
        """Pixel-centre coordinates along one axis (arcsec), length ``n``."""
        return (np.arange(self.n) - (self.n - 1) / 2.0) * self.delta

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(x, y)`` (arcsec), each of shape ``(n, n)``.

        ``x`` varies along columns (axis 1), ``y`` along rows (axis 0).
        """
        a = self.axis
        x, y = np.meshgrid(a, a, indexing="xy")
        return x, y

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in arcsec for ``imshow(..., origin="lower")``."""
        h = self.n * self.delta / 2.0
        return (-h, h, -h, h)


@dataclass(frozen=True)
class ImageGrid(_Grid):
    """The image (observation) plane grid.

    Parameters
    ----------
    n : int
        Pixels per side (>= 2).
    pixel_scale : float
        Pixel size in arcsec (> 0, with ``n * pixel_scale`` finite). The default 192 x 0.04 arcsec is the seed's
        7.68 arcsec field.
    """

    n: int = 192
    pixel_scale: float = 0.04

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int_at_least("n", self.n, 2))
        object.__setattr__(self, "pixel_scale", positive_float("pixel_scale", self.pixel_scale))
        if not np.isfinite(self.n * self.pixel_scale):
            raise ValueError(f"pixel_scale={self.pixel_scale!r} arcsec times n={self.n} pixels overflows: "
                             f"the field of view must be finite")

    @property
    def delta(self) -> float:
        """Pixel size in arcsec."""
        return self.pixel_scale

    @property
    def fov(self) -> float:
        """Field of view (side length) in arcsec."""
        return self.n * self.pixel_scale


@dataclass(frozen=True)
class SourceGrid(_Grid):
    """The source plane grid.

    Parameters
    ----------
    n : int
        Pixels per side (>= 2).
    fov : float
        Side length in arcsec (finite, > 0); the pixel size is ``fov / n`` (which must not
        underflow to 0). The default
        1.5 arcsec matches the seed's source grid.
    """

    n: int = 64
    fov: float = 1.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int_at_least("n", self.n, 2))
        object.__setattr__(self, "fov", positive_float("fov", self.fov))
        if not self.fov / self.n > 0:
            raise ValueError(f"fov={self.fov!r} arcsec over n={self.n} pixels underflows to a pixel size of 0")

    @property
    def delta(self) -> float:
        """Pixel size in arcsec."""
        return self.fov / self.n

    @property
    def pixel_scale(self) -> float:
        """Pixel size in arcsec (alias of ``delta``)."""
        return self.delta
