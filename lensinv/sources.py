"""Source-plane galaxies: a procedural prior and a loader for real galaxy images.

Both produce non-negative sources on a :class:`~lensinv.SourceGrid`, peak-normalised
to 1, randomly scaled and shifted inside the grid, from a ``numpy.random.Generator``
(so a data set is reproducible from its seed):

- :class:`ProceduralSources` draws Sersic bulges, exponential disks with
  logarithmic spiral arms, star-forming clumps, satellites, mergers and compact
  sources down to about one pixel. No downloads; rendering is a Numba kernel.
- :class:`MixedSources` draws from a real-galaxy model (``lensinv.galaxies.RealGalaxySources``)
  with probability ``real_fraction``, else from the procedural prior.
- :class:`ImageSources` turns a user's galaxy images (a folder of FITS, PNG or
  JPEG files, or an HDF5/NumPy array of images) into sources the same way:
  background subtraction, random scale and shift, bilinear resampling.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numba as nb
import numpy as np

from .validate import finite_float
from .grids import SourceGrid
from .io import read_fits_image

log = logging.getLogger(__name__)

# component table columns
_SERSIC, _GAUSS = 0.0, 1.0
_NCOL = 12  # kind, amp, x0, y0, size, n, q, phi, arms, pitch, arm_amp, arm_phase


class SourceModel(Protocol):
    """Anything that draws a source image for a grid from a random generator."""

    def draw(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray: ...


def _sersic_b(n: float) -> float:
    """b_n of the Sersic profile (Ciotti & Bertin 1999 expansion; half the light inside R_e)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n) + 131.0 / (1148175.0 * n**3)


@nb.njit(cache=True)
def _render(n, delta, comps):
    half = (n - 1) / 2.0
    out = np.zeros((n, n))
    for c in range(comps.shape[0]):
        kind, amp, x0, y0, size, sn, q, phi, arms, pitch, arm_amp, arm_phase = comps[c]
        cp = math.cos(phi)
        sp = math.sin(phi)
        bn = 2.0 * sn - 1.0 / 3.0 + 4.0 / (405.0 * sn) + 46.0 / (25515.0 * sn * sn) if kind == _SERSIC else 0.0
        inv_n = 1.0 / sn if kind == _SERSIC else 0.0
        # only pixels within a few sizes matter
        reach = size * (12.0 if kind == _SERSIC else 6.0) / math.sqrt(q)
        i_lo = max(0, int(math.floor((y0 - reach) / delta + half)))
        i_hi = min(n - 1, int(math.ceil((y0 + reach) / delta + half)))
        j_lo = max(0, int(math.floor((x0 - reach) / delta + half)))
        j_hi = min(n - 1, int(math.ceil((x0 + reach) / delta + half)))
        for i in range(i_lo, i_hi + 1):
            dy = (i - half) * delta - y0
            for j in range(j_lo, j_hi + 1):
                dx = (j - half) * delta - x0
                xp = cp * dx + sp * dy
                yp = cp * dy - sp * dx
                r = math.sqrt(q * xp * xp + yp * yp / q)
                if kind == _SERSIC:
                    # amp is the central brightness; the core is softened over half a pixel so that steep
                    # (high-n) cusps are not a single bright pixel
                    rs = math.sqrt(r * r + 0.25 * delta * delta)
                    v = amp * math.exp(-bn * (rs / size) ** inv_n)
                    if arms > 0.0 and r > 0.0:
                        theta = math.atan2(yp, xp)
                        wind = math.log(r / size) / pitch
                        mod = 0.5 * (1.0 + math.cos(arms * (theta - wind) + arm_phase))
                        blend = 1.0 - math.exp(-(r / size) ** 2)  # no arms in the core
                        v *= 1.0 - arm_amp * blend * (1.0 - mod * mod)
                else:
                    v = amp * math.exp(-0.5 * (r / size) ** 2)
                out[i, j] += v
    return out


def _finalise(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, None)
    peak = img.max()
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError("source has no positive flux on the grid")
    return img / peak


def render_components(table: np.ndarray, grid: SourceGrid) -> np.ndarray:
    """Render a component table (internal format) on a grid, peak-normalised."""
    return _finalise(_render(grid.n, grid.delta, np.ascontiguousarray(table, dtype=np.float64)))


@dataclass(frozen=True)
class SourcePrior:
    """Ranges of the procedural galaxy prior. Sizes in arcsec, angles in radians.

    Components are Sersic profiles ``I = I0 exp(-b_n (r / R_e)^(1/n))`` (``I0``
    the central brightness, ``r`` the elliptical radius ``sqrt(q x'^2 + y'^2/q)``)
    and Gaussians; amplitudes are relative to the main component's centre.

    Parameters
    ----------
    size : tuple of float
        Half-light radius of the main component, drawn log-uniformly.
    compact_fraction : float
        Fraction of sources that are compact (size ``compact_pixels`` source pixels).
    compact_pixels : tuple of float
        Gaussian width of compact sources in source pixels (about one pixel).
    sersic_n : tuple of float
        Sersic index range of bulges and ellipticals.
    axis_ratio : tuple of float
        Projected axis-ratio range of the components.
    disk_fraction : float
        Fraction of extended sources that are bulge + disk (the rest are ellipticals).
    spiral_fraction : float
        Fraction of disks with logarithmic spiral arms (2-4 arms).
    clumps_mean : float
        Mean number of star-forming clumps on a disk (Poisson).
    satellite_prob : float
        Probability of 1-3 satellite galaxies.
    merger_prob : float
        Probability of a second galaxy of comparable size.
    margin : float
        Fraction of the grid's half-width kept free around the main component
        (it is shifted uniformly within the rest).
    """

    size: tuple[float, float] = (0.05, 0.35)
    compact_fraction: float = 0.12
    compact_pixels: tuple[float, float] = (0.6, 1.5)
    sersic_n: tuple[float, float] = (0.5, 4.0)
    axis_ratio: tuple[float, float] = (0.3, 1.0)
    disk_fraction: float = 0.65
    spiral_fraction: float = 0.5
    clumps_mean: float = 3.0
    satellite_prob: float = 0.3
    merger_prob: float = 0.12
    margin: float = 0.1

    def __post_init__(self) -> None:
        for name in ("size", "compact_pixels", "sersic_n", "axis_ratio"):
            lo, hi = (finite_float(f"{name}[0]", getattr(self, name)[0]), finite_float(f"{name}[1]", getattr(self, name)[1]))
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (lo, hi))
        if self.axis_ratio[1] > 1:
            raise ValueError(f"axis_ratio must lie in (0, 1], got {self.axis_ratio!r}")
        for name in ("compact_fraction", "disk_fraction", "spiral_fraction", "satellite_prob", "merger_prob", "margin"):
            v = finite_float(name, getattr(self, name))
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if finite_float("clumps_mean", self.clumps_mean) < 0:
            raise ValueError(f"clumps_mean must be >= 0, got {self.clumps_mean!r}")


@dataclass(frozen=True)
class ProceduralSources:
    """The procedural galaxy prior (no downloads). See :class:`SourcePrior` for its ranges."""

    prior: SourcePrior = field(default_factory=SourcePrior)

    def components(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray:
        """Draw one galaxy's component table (rows of :data:`_NCOL` numbers)."""
        p = self.prior
        rows: list[list[float]] = []
        half = grid.fov / 2.0
        lu = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731

        def comp(kind, amp, x0, y0, size, n=1.0, q=1.0, phi=0.0, arms=0.0, pitch=1.0, arm_amp=0.0, arm_phase=0.0):
            rows.append([kind, amp, x0, y0, size, n, q, phi, arms, pitch, arm_amp, arm_phase])

        def shift(extent: float) -> tuple[float, float]:
            room = max(half * (1.0 - p.margin) - extent, 0.0)
            return rng.uniform(-room, room), rng.uniform(-room, room)

        if rng.uniform() < p.compact_fraction:
            width = rng.uniform(*p.compact_pixels) * grid.delta
            x0, y0 = shift(3 * width)
            comp(_GAUSS, 1.0, x0, y0, width, q=rng.uniform(0.6, 1.0), phi=rng.uniform(0, np.pi))
            if rng.uniform() < 0.3:  # a faint host
                comp(_SERSIC, rng.uniform(0.02, 0.15), x0, y0, lu(2 * width, 8 * width), n=1.0,
                     q=rng.uniform(*p.axis_ratio), phi=rng.uniform(0, np.pi))
            return np.array(rows)

        re = lu(*p.size)
        x0, y0 = shift(1.5 * re)
        phi = rng.uniform(0, np.pi)
        q = rng.uniform(*p.axis_ratio)
        if rng.uniform() < p.disk_fraction:
            bulge_re = re * rng.uniform(0.15, 0.5)
            comp(_SERSIC, rng.uniform(0.3, 1.0), x0, y0, bulge_re, n=rng.uniform(max(p.sersic_n[0], 1.5), p.sersic_n[1]),
                 q=min(1.0, q * rng.uniform(1.0, 1.6)), phi=phi)
            spiral = rng.uniform() < p.spiral_fraction
            comp(_SERSIC, rng.uniform(0.3, 1.0), x0, y0, re, n=1.0, q=q, phi=phi,
                 arms=float(rng.integers(2, 5)) if spiral else 0.0, pitch=math.tan(rng.uniform(0.2, 0.5)),
                 arm_amp=rng.uniform(0.5, 1.0) if spiral else 0.0, arm_phase=rng.uniform(0, 2 * np.pi))
            for _ in range(rng.poisson(p.clumps_mean)):
                r = re * math.sqrt(rng.uniform(0.05, 2.0))
                t = rng.uniform(0, 2 * np.pi)
                comp(_GAUSS, rng.uniform(0.1, 0.6), x0 + r * math.cos(t), y0 + r * math.sin(t),
                     max(0.6 * grid.delta, re * rng.uniform(0.03, 0.15)), q=rng.uniform(0.6, 1.0))
        else:
            comp(_SERSIC, 1.0, x0, y0, re, n=rng.uniform(*p.sersic_n), q=q, phi=phi)
        if rng.uniform() < p.merger_prob:
            t = rng.uniform(0, 2 * np.pi)
            r = re * rng.uniform(1.5, 4.0)
            comp(_SERSIC, rng.uniform(0.3, 1.0), x0 + r * math.cos(t), y0 + r * math.sin(t), re * rng.uniform(0.5, 1.2),
                 n=rng.uniform(*p.sersic_n), q=rng.uniform(*p.axis_ratio), phi=rng.uniform(0, np.pi))
        if rng.uniform() < p.satellite_prob:
            for _ in range(rng.integers(1, 4)):
                t = rng.uniform(0, 2 * np.pi)
                r = re * rng.uniform(1.5, 5.0)
                comp(_SERSIC, rng.uniform(0.05, 0.5), x0 + r * math.cos(t), y0 + r * math.sin(t),
                     max(0.6 * grid.delta, re * rng.uniform(0.05, 0.3)), n=rng.uniform(0.5, 2.5),
                     q=rng.uniform(0.5, 1.0), phi=rng.uniform(0, np.pi))
        return np.array(rows)

    def draw(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray:
        """One source on ``grid``: non-negative, peak 1, shape ``(n, n)``."""
        return render_components(self.components(rng, grid), grid)


_IMAGE_SUFFIXES = {".fits", ".fit", ".fts", ".png", ".jpg", ".jpeg"}


def _read_image(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix in (".fits", ".fit", ".fts"):
            img = read_fits_image(path, name="galaxy image", allow_cube=True).data
        else:
            import matplotlib.image as mpimg

            img = np.asarray(mpimg.imread(path), dtype=np.float64)
            if img.ndim == 3:
                img = img[..., :3].mean(axis=-1)  # RGB(A) -> grey
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read galaxy image {path}: {exc}") from exc
    return img


def _prepare(img: np.ndarray, name: str, border: float) -> np.ndarray:
    """Background-subtract (median of the border frame), clip negatives, peak-normalise."""
    img = np.array(img, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 4:
        raise ValueError(f"galaxy image {name} must be 2-D and at least 4x4, got shape {img.shape}")
    img = np.where(np.isfinite(img), img, np.nan)
    b = max(1, int(round(border * min(img.shape))))
    frame = np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[:, :b].ravel(), img[:, -b:].ravel()])
    bg = np.nanmedian(frame) if np.any(np.isfinite(frame)) else 0.0
    img = np.nan_to_num(img - bg, nan=0.0)
    img = np.clip(img, 0.0, None)
    if img.max() <= 0:
        raise ValueError(f"galaxy image {name} has no flux above its background")
    return img / img.max()


@dataclass(frozen=True, eq=False)
class ImageSources:
    """Sources made from a user's galaxy images.

    Parameters
    ----------
    path : str or Path
        A folder of FITS/PNG/JPEG files, a ``.npy``/``.npz`` file holding an
        ``(N, H, W)`` array, or an HDF5 file (``dataset`` names the array).
    scale : tuple of float
        The image's side, as a fraction of the source grid's field of view,
        drawn log-uniformly (the random scaling).
    margin : float
        Fraction of the grid's half-width kept free; the image centre is shifted
        uniformly within the rest (the random shift).
    border : float
        Width of the frame, as a fraction of the image side, whose median is
        the background subtracted.
    dataset : str
        Array name inside an HDF5 file.
    """

    path: str | os.PathLike
    scale: tuple[float, float] = (0.4, 1.2)
    margin: float = 0.1
    border: float = 0.1
    dataset: str = "images"
    images: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < float(lo) <= float(hi):
            raise ValueError(f"scale must be a range 0 < lo <= hi, got {self.scale!r}")
        object.__setattr__(self, "images", tuple(self._load()))
        log.info("loaded %d galaxy images from %s", len(self.images), self.path)

    def _load(self) -> list[np.ndarray]:
        path = Path(self.path)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no FITS/PNG/JPEG galaxy images in folder {path}")
            return [_prepare(_read_image(f), str(f), self.border) for f in files]
        if not path.is_file():
            raise ValueError(f"galaxy image source {path} does not exist")
        if path.suffix.lower() in (".npy", ".npz"):
            arr = np.load(path)
            if isinstance(arr, np.lib.npyio.NpzFile):
                arr = arr[arr.files[0]]
        elif path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                if self.dataset not in f:
                    raise ValueError(f"{path} has no dataset {self.dataset!r}")
                arr = f[self.dataset][()]
        else:
            return [_prepare(_read_image(path), str(path), self.border)]
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"{path}: expected an (N, H, W) array of images, got shape {arr.shape}")
        return [_prepare(a, f"{path}[{k}]", self.border) for k, a in enumerate(arr)]

    def draw(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray:
        """A random image, randomly scaled and shifted, resampled onto ``grid`` (peak 1)."""
        from scipy.ndimage import map_coordinates

        img = self.images[rng.integers(len(self.images))]
        h, w = img.shape
        side = grid.fov * math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        room = max(grid.fov / 2 * (1 - self.margin) - side / 2, 0.0)
        x0, y0 = rng.uniform(-room, room), rng.uniform(-room, room)
        x, y = grid.coordinates()
        # the image's longer side spans `side` arcsec; row 0 of the image is at the bottom (origin="lower")
        pix = side / max(h, w)
        cols = (x - x0) / pix + (w - 1) / 2
        rows = (y - y0) / pix + (h - 1) / 2
        out = map_coordinates(img, [rows.ravel(), cols.ravel()], order=1, mode="constant", cval=0.0)
        return _finalise(out.reshape(grid.shape))


def describe_sources(src: SourceModel) -> dict:
    """A JSON-able description of a source model, for a data set's configuration.

    Models with a ``describe()`` method describe themselves; the procedural prior and
    :class:`ImageSources` keep the form existing data-set files were written with (so resuming
    and concatenating them still works).
    """
    if isinstance(src, ProceduralSources):
        return {"kind": "procedural", **asdict(src.prior)}
    if hasattr(src, "describe"):
        return src.describe()
    desc = {"kind": type(src).__name__, **{k: (str(v) if k == "path" else v)
                                           for k, v in vars(src).items() if k != "images"}}
    desc["n_images"] = len(getattr(src, "images", ()))
    return desc


@dataclass(frozen=True)
class MixedSources:
    """A mixture of two source models: ``real`` with probability ``real_fraction``, else ``procedural``.

    Parameters
    ----------
    real : SourceModel
        Typically :class:`lensinv.galaxies.RealGalaxySources`.
    procedural : SourceModel
        Default: the procedural prior.
    real_fraction : float
        In [0, 1]; one uniform number per draw picks the model.
    """

    real: SourceModel
    procedural: SourceModel = field(default_factory=ProceduralSources)
    real_fraction: float = 0.5

    def __post_init__(self) -> None:
        f = finite_float("real_fraction", self.real_fraction)
        if not 0 <= f <= 1:
            raise ValueError(f"real_fraction must be in [0, 1], got {self.real_fraction!r}")
        object.__setattr__(self, "real_fraction", f)

    def draw(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray:
        """One source on ``grid``: non-negative, peak 1, shape ``(n, n)``."""
        model = self.real if rng.uniform() < self.real_fraction else self.procedural
        return model.draw(rng, grid)

    def describe(self) -> dict:
        return {"kind": "mixed", "real_fraction": self.real_fraction, "real": describe_sources(self.real),
                "procedural": describe_sources(self.procedural)}
