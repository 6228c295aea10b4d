"""Real galaxies as lensed sources: a fixed validation split, cleaning, and random augmentation.

The images are the Galaxy Zoo DECaLS cut-outs of ``../shared/data/galaxy_zoo_decals/gz_decals_400.npz``
(see that folder's README): display-stretched grz composites, converted to grey, with sky noise,
neighbouring galaxies and stars around a central galaxy. They are not shipped with the project;
:func:`default_galaxy_path` finds them (or ``$LENSINV_GALAXIES``).

Validation split
    A galaxy is in the validation split when its salted SHA-256 hash,
    ``sha256(SPLIT_SALT + ":" + iauname)``, is among the smallest ``VALIDATION_FRACTION`` (20 %,
    rounded) of the file's galaxies: 80 of the 400. The rule depends on the names only (not on
    their order, the images or any random state), so the split never changes. Training code only
    ever gets ``split="train"``: :class:`RealGalaxySources` holds the images of one split, and
    the training presets use the training split (``lensinv.simulate.training_config`` refuses a
    configuration that would draw validation galaxies).

Preparation (once per galaxy, :func:`prepare_galaxy`)
    Subtract the sky (sigma-clipped median of a border frame), smooth lightly, keep the connected
    component above ``max(nsigma * sky noise, min_fraction * peak)`` that contains the centre
    (neighbours and stars that do not touch it are removed), fill its holes, dilate it, and
    apply it as a soft mask (a Gaussian-blurred edge). The result is cropped to the galaxy.

Augmentation (per draw, :func:`render_galaxy`)
    A random rotation by any angle, a flip (half the draws), a zoom that gives the galaxy a
    half-light radius drawn log-uniformly in ``Augmentation.half_light`` (capped so the whole
    galaxy fits inside the grid), a continuous (sub-pixel) shift, and an intensity stretch
    ``I -> I**p`` with ``p`` log-uniform in ``Augmentation.stretch`` (the images are
    display-stretched, so their intensity scale is uncertain anyway). The image is blurred before
    it is sampled when the zoom shrinks it (no aliasing), sampled bilinearly at the source-grid
    pixel centres, clipped at 0 and peak-normalised to 1. All of it is vectorised
    ``scipy.ndimage``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .validate import finite_float, positive_float
from .grids import SourceGrid

log = logging.getLogger(__name__)

#: where the Galaxy Zoo file lies under the shared data folder
GALAXY_ZOO_FILE = Path("galaxy_zoo_decals") / "gz_decals_400.npz"
#: salt of the split hash; changing it would change the split, so never do
SPLIT_SALT = "lensinv-gz-validation-v1"
#: fraction of a file's galaxies in the validation split (rounded to the nearest integer count)
VALIDATION_FRACTION = 0.2
SPLITS = ("train", "validation")


def default_galaxy_path() -> Path:
    """The Galaxy Zoo file: ``$LENSINV_GALAXIES`` if set, else ``../shared/data/`` next to the repository.

    Returns
    -------
    Path
        The path (it may not exist: callers report that).
    """
    env = os.environ.get("LENSINV_GALAXIES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / GALAXY_ZOO_FILE


def split_hash(name: str) -> int:
    """The salted SHA-256 of a galaxy name, as an integer (the split's sort key)."""
    return int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}:{name}".encode()).digest(), "big")


def validation_mask(names: Sequence[str]) -> np.ndarray:
    """Which galaxies are in the validation split.

    Parameters
    ----------
    names : sequence of str
        The galaxies' unique names (``iauname``).

    Returns
    -------
    ndarray of bool
        True for the ``round(VALIDATION_FRACTION * len(names))`` galaxies with the smallest
        :func:`split_hash`.
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError("names must be unique to define the validation split")
    n_val = int(round(VALIDATION_FRACTION * len(names)))
    order = sorted(range(len(names)), key=lambda k: split_hash(names[k]))
    mask = np.zeros(len(names), dtype=bool)
    mask[order[:n_val]] = True
    return mask


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def file_checksum(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_galaxy_images(path: Optional[os.PathLike] = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The raw images and names of one split of a galaxy file.

    Parameters
    ----------
    path : path-like, optional
        An ``.npz`` with ``images`` ``(N, H, W)`` and ``iauname`` ``(N,)`` (names default to the
        indices when absent). Default: :func:`default_galaxy_path`.
    split : {"train", "validation"}

    Returns
    -------
    images : ndarray, float64, shape (n, H, W)
    names : ndarray of str, shape (n,)
    """
    _check_split(split)
    path = Path(default_galaxy_path() if path is None else path)
    if not path.is_file():
        raise ValueError(f"galaxy file {path} does not exist (set LENSINV_GALAXIES or pass its path)")
    with np.load(path) as f:
        if "images" not in f.files:
            raise ValueError(f"galaxy file {path} has no 'images' array")
        images = np.asarray(f["images"], dtype=np.float64)
        names = np.asarray(f["iauname"]).astype(str) if "iauname" in f.files else np.arange(len(images)).astype(str)
    if images.ndim != 3 or len(images) != len(names) or len(images) == 0:
        raise ValueError(f"galaxy file {path}: expected images (N, H, W) and N names, got {images.shape} and "
                         f"{names.shape}")
    mask = validation_mask(names)
    keep = mask if split == "validation" else ~mask
    return images[keep], names[keep]


@dataclass(frozen=True)
class Preparation:
    """How a raw galaxy cut-out is cleaned (all lengths in the cut-out's pixels).

    Parameters
    ----------
    border : float
        Width of the frame whose sigma-clipped median is the sky, as a fraction of the side.
    smooth : float
        Gaussian sigma of the smoothing before thresholding.
    nsigma : float
        Threshold in units of the smoothed sky noise.
    min_fraction : float
        Threshold floor as a fraction of the smoothed peak (display-stretched images have bright
        outskirts; this keeps faint bridges to neighbours from joining them).
    centre_radius : float
        The component containing the centre pixel is kept; when the centre is below the threshold,
        the brightest component reaching within this radius of the centre (fraction of the side).
    levels : int
        Thresholds between the detection threshold and the peak at which the kept component is
        split into branches (as SExtractor's deblending); 0 disables deblending.
    contrast : float
        A branch that separates from the central galaxy's at some level is a neighbour (removed,
        with the pixels nearest to it) when its flux above that level is at least ``contrast``
        times the component's flux and its peak at least ``prominence`` times that level.
    prominence : float
        See ``contrast`` (spiral arms and clumps are shallow; stars and neighbours stand out).
    dilate : int
        Pixels by which the kept component is grown before softening.
    soften : float
        Gaussian sigma of the mask's soft edge.
    """

    border: float = 0.1
    smooth: float = 1.0
    nsigma: float = 3.0
    min_fraction: float = 0.04
    centre_radius: float = 0.15
    levels: int = 24
    contrast: float = 0.003
    prominence: float = 2.0
    dilate: int = 2
    soften: float = 1.5

    def __post_init__(self) -> None:
        b = finite_float("border", self.border)
        if not 0 < b < 0.5:
            raise ValueError(f"border must be in (0, 0.5), got {self.border!r}")
        for name in ("smooth", "soften"):
            if finite_float(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        positive_float("nsigma", self.nsigma)
        f = finite_float("min_fraction", self.min_fraction)
        if not 0 <= f < 1:
            raise ValueError(f"min_fraction must be in [0, 1), got {self.min_fraction!r}")
        c = finite_float("centre_radius", self.centre_radius)
        if not 0 < c <= 0.5:
            raise ValueError(f"centre_radius must be in (0, 0.5], got {self.centre_radius!r}")
        for name in ("contrast", "prominence"):
            positive_float(name, getattr(self, name))
        for name in ("levels", "dilate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if isinstance(self.dilate, bool) or not isinstance(self.dilate, (int, np.integer)) or self.dilate < 0:
            raise ValueError(f"dilate must be an integer >= 0, got {self.dilate!r}")


@dataclass(frozen=True, eq=False)
class PreparedGalaxy:
    """A cleaned galaxy, cropped to its mask.

    Attributes
    ----------
    image : ndarray, float64, shape (h, w)
        Sky-subtracted, neighbour-free, non-negative, peak 1.
    centre : tuple of float
        Flux-weighted centre (row, column) in ``image``'s pixels.
    r50 : float
        Half-light radius around ``centre`` in pixels.
    radius : float
        Distance from ``centre`` to the farthest pixel with any flux, in pixels.
    name : str
    """

    image: np.ndarray
    centre: tuple[float, float]
    r50: float
    radius: float
    name: str = ""


def _clipped_stats(values: np.ndarray, sigma: float = 3.0, iters: int = 5) -> tuple[float, float]:
    """Sigma-clipped median and standard deviation (vectorised)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 0.0
    for _ in range(iters):
        med, std = float(np.median(v)), float(np.std(v))
        keep = np.abs(v - med) <= sigma * std if std > 0 else np.ones(v.shape, bool)
        if keep.all() or keep.sum() < 10:
            break
        v = v[keep]
    return float(np.median(v)), float(np.std(v))


def _frame(img: np.ndarray, b: int) -> np.ndarray:
    return np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[b:-b, :b].ravel(), img[b:-b, -b:].ravel()])


def _deblend(sm: np.ndarray, mask: np.ndarray, threshold: float, prep: Preparation) -> np.ndarray:
    """The part of ``mask`` that belongs to the central galaxy: prominent branches that separate from
    the central one at higher thresholds are neighbours, and each pixel goes to the nearest branch
    downhill (a watershed of the smoothed image)."""
    peak = float(sm[mask].max())
    if prep.levels == 0 or peak <= threshold:
        return mask
    total = float(np.clip(sm[mask] - threshold, 0, None).sum())
    centre = np.unravel_index(np.argmax(np.where(mask, sm, -np.inf)), sm.shape)
    # the central branch: the brightest pixel within centre_radius of the centre
    near = (_centre_distance(sm.shape) <= prep.centre_radius * min(sm.shape)) & mask
    if near.any():
        centre = np.unravel_index(np.argmax(np.where(near, sm, -np.inf)), sm.shape)
    markers = np.zeros(sm.shape, dtype=np.int32)
    n_mark = 1
    for t in threshold * (peak / threshold) ** (np.arange(1, prep.levels + 1) / (prep.levels + 1)):
        lab, n = ndimage.label((sm > t) & mask)
        if n < 2:
            continue
        kc = lab[centre]
        if kc == 0:  # above the central galaxy's peak: only neighbours are left
            break
        ids = np.arange(1, n + 1)
        flux = ndimage.sum_labels(sm - t, lab, ids)
        top = ndimage.maximum(sm, lab, ids)
        marked = ndimage.maximum(markers, lab, ids)
        for k, f, p, m in zip(ids, flux, top, marked):
            if k != kc and m == 0 and f >= prep.contrast * total and p >= prep.prominence * t:
                if n_mark == 1:  # the central branch where the first neighbour separates
                    markers[(lab == kc) & (markers == 0)] = 1
                n_mark += 1
                markers[lab == k] = n_mark
    if n_mark == 1:
        return mask
    # every pixel goes to the nearest branch
    _, (ii, jj) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    return mask & (markers[ii, jj] == 1)


def _centre_distance(shape: tuple[int, int]) -> np.ndarray:
    ii, jj = np.indices(shape, dtype=np.float64)
    return np.hypot(ii - (shape[0] - 1) / 2, jj - (shape[1] - 1) / 2)


def prepare_galaxy(image: np.ndarray, prep: Preparation = Preparation(), name: str = "") -> PreparedGalaxy:
    """Remove the sky and the neighbours of the central galaxy of a cut-out.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The cut-out (any linear or display units; non-finite pixels count as sky).
    prep : Preparation
    name : str
        For messages.

    Returns
    -------
    PreparedGalaxy

    Raises
    ------
    ValueError
        If the image is not 2-D and at least 8x8, or no component above the threshold reaches the
        centre.
    """
    img = np.array(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"galaxy image {name!r} must be 2-D and at least 8x8, got shape {img.shape}")
    h, w = img.shape
    b = max(1, int(round(prep.border * min(h, w))))
    sky, _ = _clipped_stats(_frame(img, b))
    img = np.nan_to_num(img - sky, nan=0.0, posinf=0.0, neginf=0.0)
    sm = ndimage.gaussian_filter(img, prep.smooth, mode="nearest") if prep.smooth > 0 else img
    _, noise = _clipped_stats(_frame(sm, b))
    peak = float(sm.max())
    if peak <= 0:
        raise ValueError(f"galaxy image {name!r} has no flux above its sky")
    threshold = max(prep.nsigma * noise, prep.min_fraction * peak)
    labels, n_lab = ndimage.label(sm > threshold)
    ci, cj = (h - 1) / 2, (w - 1) / 2
    k = labels[int(round(ci)), int(round(cj))]
    if k == 0:  # the centre is below the threshold: the brightest component reaching near it
        ii, jj = np.indices(img.shape)
        near = np.hypot(ii - ci, jj - cj) <= prep.centre_radius * min(h, w)
        cand = np.unique(labels[near & (labels > 0)])
        if cand.size == 0:
            raise ValueError(f"galaxy image {name!r}: nothing above the threshold near the centre")
        flux = ndimage.sum_labels(np.clip(img, 0, None), labels, cand)
        k = int(cand[np.argmax(flux)])
    mask = ndimage.binary_fill_holes(labels == k)
    mask = _deblend(sm, mask, threshold, prep)
    if prep.dilate > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(prep.dilate))
    soft = ndimage.gaussian_filter(mask.astype(np.float64), prep.soften) if prep.soften > 0 else mask.astype(float)
    # a galaxy reaching the cut-out's edge fades out over a few pixels there (no hard straight edge)
    ramp = max(3.0 * prep.soften, 2.0)
    ii, jj = np.indices(img.shape, dtype=np.float64)
    edge = np.minimum(np.minimum(ii, h - 1 - ii), np.minimum(jj, w - 1 - jj))
    soft *= np.clip(edge / ramp, 0.0, 1.0)
    soft[soft < 1e-3] = 0.0
    out = np.clip(img, 0.0, None) * soft
    rows, cols = np.nonzero(out > 0)
    if rows.size == 0:
        raise ValueError(f"galaxy image {name!r} has no flux in its central component")
    pad = 2
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, h)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, w)
    out = out[r0:r1, c0:c1]
    out /= out.max()
    ii, jj = np.indices(out.shape, dtype=np.float64)
    tot = out.sum()
    cy, cx = float((ii * out).sum() / tot), float((jj * out).sum() / tot)
    r = np.hypot(ii - cy, jj - cx)
    order = np.argsort(r, axis=None)
    cum = np.cumsum(out.ravel()[order])
    r50 = float(r.ravel()[order][np.searchsorted(cum, 0.5 * tot)])
    radius = float(r[out > 0].max()) + 0.5
    log.debug("prepared galaxy %s: %d components, kept %d; r50 %.1f px, radius %.1f px", name, n_lab, k, r50, radius)
    return PreparedGalaxy(image=out, centre=(cy, cx), r50=max(r50, 0.5), radius=radius, name=name)


@dataclass(frozen=True)
class Augmentation:
    """Random transformations of a real galaxy, per draw.

    Parameters
    ----------
    half_light : tuple of float
        Half-light radius on the sky in arcsec, drawn log-uniformly (then capped so the galaxy
        fits inside the grid, ``margin`` included).
    stretch : tuple of float
        Range of the intensity power ``p`` (``I -> I**p``), log-uniform.
    margin : float
        Fraction of the grid's half-width kept free around the galaxy.
    flip : bool
        Mirror half the draws.
    """

    half_light: tuple[float, float] = (0.06, 0.3)
    stretch: tuple[float, float] = (0.8, 1.25)
    margin: float = 0.05
    flip: bool = True

    def __post_init__(self) -> None:
        for name in ("half_light", "stretch"):
            v = getattr(self, name)
            try:
                lo, hi = finite_float(f"{name}[0]", v[0]), finite_float(f"{name}[1]", v[1])
            except (TypeError, IndexError):
                raise ValueError(f"{name} must be a pair (lo, hi), got {v!r}") from None
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {v!r}")
            object.__setattr__(self, name, (lo, hi))
        m = finite_float("margin", self.margin)
        if not 0 <= m < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"flip must be a bool, got {self.flip!r}")


def render_galaxy(galaxy: PreparedGalaxy, grid: SourceGrid, *, scale: float, angle: float = 0.0,
                  flip: bool = False, shift: tuple[float, float] = (0.0, 0.0), power: float = 1.0,
                  normalise: bool = True) -> np.ndarray:
    """Resample a prepared galaxy onto a source grid under a similarity transform.

    Parameters
    ----------
    galaxy : PreparedGalaxy
    grid : SourceGrid
    scale : float
        Arcsec per galaxy-image pixel (> 0).
    angle : float
        Counter-clockwise rotation in radians.
    flip : bool
        Mirror the galaxy's columns (before rotating).
    shift : tuple of float
        ``(x, y)`` of the galaxy's centre on the grid, arcsec.
    power : float
        Intensity stretch ``I -> I**power`` (> 0).
    normalise : bool
        Divide by the peak (otherwise surface brightness keeps the image's units, so
        ``sum * grid.delta**2`` is the flux in image-units times arcsec^2).

    Returns
    -------
    ndarray, float64, shape ``grid.shape``
        Non-negative; peak 1 with ``normalise``.
    """
    scale = positive_float("scale", scale)
    power = positive_float("power", power)
    img = galaxy.image if power == 1.0 else galaxy.image ** power
    f = grid.delta / scale  # galaxy pixels per grid pixel
    if f > 1.0:  # shrinking: low-pass first (sigma as in skimage.transform.rescale's anti-aliasing)
        img = ndimage.gaussian_filter(img, (f - 1.0) / 2.0, mode="constant", cval=0.0, truncate=3.0)
    x, y = grid.coordinates()
    dx, dy = x - shift[0], y - shift[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / scale  # rotate back by -angle, into galaxy pixels
    v = (-s * dx + c * dy) / scale
    if flip:
        u = -u
    cy, cx = galaxy.centre
    out = ndimage.map_coordinates(img, [(v + cy).ravel(), (u + cx).ravel()], order=1, mode="constant", cval=0.0)
    out = np.clip(out.reshape(grid.shape), 0.0, None)
    if normalise:
        peak = out.max()
        if not np.isfinite(peak) or peak <= 0:
            raise ValueError(f"galaxy {galaxy.name!r} has no flux on the grid (scale {scale}, shift {shift})")
        out /= peak
    return out


def draw_galaxy(galaxy: PreparedGalaxy, rng: np.random.Generator, grid: SourceGrid,
                aug: Augmentation = Augmentation()) -> np.ndarray:
    """One random augmentation of ``galaxy`` on ``grid`` (peak 1). See :class:`Augmentation`."""
    lu = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    half = grid.fov / 2 * (1.0 - aug.margin)
    scale = min(lu(*aug.half_light) / galaxy.r50, half / galaxy.radius)
    room = max(half - galaxy.radius * scale, 0.0)
    shift = (rng.uniform(-room, room), rng.uniform(-room, room))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    flip = bool(aug.flip and rng.uniform() < 0.5)
    power = lu(*aug.stretch)
    return render_galaxy(galaxy, grid, scale=scale, angle=angle, flip=flip, shift=shift, power=power)


_CACHE: dict[tuple, tuple[PreparedGalaxy, ...]] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class RealGalaxySources:
    """Sources drawn from one split of a real-galaxy file (a :class:`lensinv.sources.SourceModel`).

    Each draw picks a galaxy uniformly and augments it (:func:`draw_galaxy`). The prepared images
    are cached per process (keyed by the file's checksum), so the object itself pickles small
    (data-set workers are spawned).

    Parameters
    ----------
    path : str, optional
        The galaxy ``.npz``; default :func:`default_galaxy_path` (resolved at construction).
    split : {"train", "validation"}
    augmentation : Augmentation
    preparation : Preparation
    """

    path: Optional[str] = None
    split: str = "train"
    augmentation: Augmentation = field(default_factory=Augmentation)
    preparation: Preparation = field(default_factory=Preparation)
    checksum: str = field(init=False, default="")

    def __post_init__(self) -> None:
        _check_split(self.split)
        path = Path(default_galaxy_path() if self.path is None else self.path)
        if not path.is_file():
            raise ValueError(f"path: galaxy file {path} does not exist (set LENSINV_GALAXIES or pass its path)")
        object.__setattr__(self, "path", str(path))
        object.__setattr__(self, "checksum", file_checksum(path))

    @property
    def galaxies(self) -> tuple[PreparedGalaxy, ...]:
        """The prepared galaxies of the split (prepared once per process)."""
        key = (self.checksum, self.split, self.preparation)
        with _CACHE_LOCK:
            if key not in _CACHE:
                images, names = load_galaxy_images(self.path, self.split)
                prepared = []
                for img, name in zip(images, names):
                    try:
                        prepared.append(prepare_galaxy(img, self.preparation, str(name)))
                    except ValueError as exc:
                        log.warning("skipping galaxy %s: %s", name, exc)
                if not prepared:
                    raise ValueError(f"no usable galaxy in the {self.split} split of {self.path}")
                _CACHE[key] = tuple(prepared)
                log.info("prepared %d %s galaxies of %s", len(prepared), self.split, self.path)
            return _CACHE[key]

    def draw(self, rng: np.random.Generator, grid: SourceGrid) -> np.ndarray:
        """One source on ``grid``: non-negative, peak 1, shape ``(n, n)``."""
        gal = self.galaxies
        return draw_galaxy(gal[int(rng.integers(len(gal)))], rng, grid, self.augmentation)

    def describe(self) -> dict:
        """What defines these sources, for a data set's configuration (the file by name and checksum,
        not by location, so shards built elsewhere concatenate)."""
        return {"kind": "real-galaxies", "file": Path(self.path).name, "sha256": self.checksum, "split": self.split,
                "split_rule": f"sha256({SPLIT_SALT}:iauname), smallest {VALIDATION_FRACTION:g}",
                "n_galaxies": len(self.galaxies), "augmentation": asdict(self.augmentation),
                "preparation": asdict(self.preparation)}
