"""Simulated lens observations: lens prior, observation presets, one lens per (seed, index).

Every lens draws from its own random stream, ``SeedSequence([seed, index])``, so a
data set is the same whatever the order or the number of processes building it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .validate import finite_float, int_at_least
from .grids import ImageGrid, SourceGrid
from .observation import Observation
from .mass import SIE, ExternalShear, Lens
from .operator import LensOperator, lensing_matrix
from .psf import gaussian_psf, validate_kernel
from .sources import ImageSources, MixedSources, ProceduralSources, SourceModel, describe_sources
from .uv import InterferometerConfig

log = logging.getLogger(__name__)


def _range(name: str, value: tuple[float, float], lo_min: float = -math.inf, strict: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (finite_float(f"{name}[0]", value[0]), finite_float(f"{name}[1]", value[1]))
    except (TypeError, IndexError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}") from None
    if lo > hi or lo < lo_min or (strict and lo <= lo_min):
        raise ValueError(f"{name} must be a range {'>' if strict else '>='} {lo_min} with lo <= hi, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class LensPrior:
    """The SIE + external shear prior (the seed's ranges by default).

    Parameters
    ----------
    theta_E : tuple of float
        Einstein radius range in arcsec, uniform.
    q_min : float
        Floor on the SIE axis ratio. The ellipticity ``1 - q`` is uniform in
        ``[0, 1 - q_min]`` (the seed draws it uniform in [0, 1]); the floor
        0.2 excludes needle-like mass distributions that no observed lens
        galaxy has (lens galaxies have q >~ 0.3) and where the SIE's
        deflection diverges like 1/sqrt(q).
    gamma : tuple of float
        External shear magnitude range, uniform.
    min_magnification : float
        Draws whose total magnification (image flux over source flux) is below
        this are rejected and redrawn (with a new source).
    max_tries : int
        Give up (and raise) after this many rejected draws for one lens.
    """

    theta_E: tuple[float, float] = (0.1, 3.0)
    q_min: float = 0.2
    gamma: tuple[float, float] = (0.0, 0.2)
    min_magnification: float = 3.0
    max_tries: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta_E", _range("theta_E", self.theta_E, 0.0, strict=True))
        q_min = finite_float("q_min", self.q_min)
        if not 0 < q_min <= 1:
            raise ValueError(f"q_min must be in (0, 1], got {self.q_min!r}")
        object.__setattr__(self, "gamma", _range("gamma", self.gamma, 0.0))
        if finite_float("min_magnification", self.min_magnification) < 0:
            raise ValueError(f"min_magnification must be >= 0, got {self.min_magnification!r}")
        int_at_least("max_tries", self.max_tries, 1)

    def draw(self, rng: np.random.Generator) -> Lens:
        """One lens centred on the origin: orientation and shear angle uniform in [0, 2 pi)."""
        return Lens(
            SIE(theta_E=rng.uniform(*self.theta_E), q=1.0 - rng.uniform(0.0, 1.0 - self.q_min),
                phi=rng.uniform(0.0, 2.0 * math.pi)),
            ExternalShear(gamma=rng.uniform(*self.gamma), phi=rng.uniform(0.0, 2.0 * math.pi)),
        )


@dataclass(frozen=True)
class ObservationPreset:
    """How a lensed image is observed.

    Parameters
    ----------
    name : str
    image_grid, source_grid : ImageGrid, SourceGrid
    supersample : int
        Sub-pixels per image-pixel side for the lensing operator.
    psf_fwhm : tuple of float or None
        Gaussian PSF FWHM range in arcsec (uniform); None for no PSF.
    psf_size : int
        Odd side of the stored PSF kernel in pixels (the same for every lens).
    snr : tuple of float or None
        Peak signal-to-noise range of the lensed image, log-uniform; the noise
        sigma is ``peak(F L s) / snr``. None for noise-free images (sigma 0).
        With an interferometer: of the natural-weighted dirty image (its peak over the noise of
        a dirty-image pixel).
    interferometer : InterferometerConfig or None
        Observe with an interferometer instead of imaging (no PSF then): the data are complex
        visibilities with thermal noise, the same sigma for each (per real and imaginary part),
        and the stored image is their natural-weighted dirty image
        (:meth:`lensinv.VisibilityOperator.dirty`).
    """

    name: str
    image_grid: ImageGrid = field(default_factory=ImageGrid)
    source_grid: SourceGrid = field(default_factory=SourceGrid)
    supersample: int = 4
    psf_fwhm: Optional[tuple[float, float]] = None
    psf_size: int = 15
    snr: Optional[tuple[float, float]] = None
    interferometer: Optional[InterferometerConfig] = None

    def __post_init__(self) -> None:
        if self.interferometer is not None:
            if not isinstance(self.interferometer, InterferometerConfig):
                raise ValueError(f"interferometer must be None or an InterferometerConfig, got "
                                 f"{type(self.interferometer).__name__}")
            if self.psf_fwhm is not None:
                raise ValueError("psf_fwhm must be None with an interferometer (the dirty beam replaces the PSF)")
        int_at_least("supersample", self.supersample, 1)
        if self.psf_fwhm is not None:
            object.__setattr__(self, "psf_fwhm", _range("psf_fwhm", self.psf_fwhm, 0.0, strict=True))
        if int_at_least("psf_size", self.psf_size, 1) % 2 == 0:
            raise ValueError(f"psf_size must be odd, got {self.psf_size}")
        if self.snr is not None:
            object.__setattr__(self, "snr", _range("snr", self.snr, 0.0, strict=True))


PRESETS: dict[str, ObservationPreset] = {
    # the seed: noise-free, PSF-free 192x192 images of a 64x64, 1.5 arcsec source grid
    "magnet": ObservationPreset(name="magnet"),
    # HST-like: Gaussian PSF of 0.05-0.15 arcsec FWHM, peak S/N 10-200
    "realistic": ObservationPreset(name="realistic", psf_fwhm=(0.05, 0.15), snr=(10.0, 200.0)),
    # the realistic observation with real galaxies (training split) mixed with procedural sources
    "galaxies": ObservationPreset(name="galaxies", psf_fwhm=(0.05, 0.15), snr=(10.0, 200.0)),
    # comparison on the validation galaxies: the realistic ranges, and one fixed observation
    "validation": ObservationPreset(name="validation", psf_fwhm=(0.05, 0.15), snr=(10.0, 200.0)),
    "validation-fixed": ObservationPreset(name="validation-fixed", psf_fwhm=(0.08, 0.08), snr=(50.0, 50.0)),
    # ALMA-like visibilities (lensinv.uv: 43 antennas, 2.5 km, 4 h track, 300 s averages, 224 + 240 GHz:
    # 86,688 visibilities), Gaussian primary beam, thermal noise at dirty-image peak S/N 10-200
    "alma": ObservationPreset(name="alma", snr=(10.0, 200.0), interferometer=InterferometerConfig()),
}

#: the source model each preset uses unless told otherwise (a :func:`source_model` spec)
PRESET_SOURCES: dict[str, str] = {"magnet": "procedural", "realistic": "procedural", "galaxies": "galaxies",
                                  "validation": "validation", "validation-fixed": "validation", "alma": "galaxies"}

#: fraction of real galaxies in the ``galaxies`` source spec (the rest procedural)
GALAXIES_REAL_FRACTION = 0.5

#: the source specs :func:`source_model` knows (besides a path to galaxy images)
SOURCE_SPECS = ("procedural", "galaxies", "real", "validation")


def source_model(spec: str | None = None, galaxy_file: str | None = None) -> SourceModel:
    """The source model named by ``spec``.

    Parameters
    ----------
    spec : str
        ``procedural``; ``galaxies`` (real galaxies of the training split with probability
        :data:`GALAXIES_REAL_FRACTION`, else procedural); ``real`` (training-split galaxies only);
        ``validation`` (validation-split galaxies only: for comparisons, never for training); or a
        path to a user's galaxy images (:class:`lensinv.sources.ImageSources`).
    galaxy_file : str, optional
        The real-galaxy file (default ``lensinv.galaxies.default_galaxy_path()``).
    """
    if spec is None or spec == "procedural":
        return ProceduralSources()
    if spec in ("galaxies", "real", "validation"):
        from .galaxies import RealGalaxySources

        real = RealGalaxySources(path=galaxy_file, split="validation" if spec == "validation" else "train")
        return MixedSources(real=real, real_fraction=GALAXIES_REAL_FRACTION) if spec == "galaxies" else real
    return ImageSources(spec)


def simulation_config(preset: str, sources: str | None = None, galaxy_file: str | None = None) -> SimulationConfig:
    """The configuration of a named preset, with its default sources unless ``sources`` names others.

    Raises
    ------
    ValueError
        For an unknown ``preset`` or a missing galaxy file.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return SimulationConfig(preset=PRESETS[preset],
                            sources=source_model(PRESET_SOURCES[preset] if sources is None else sources, galaxy_file))


def uses_validation_galaxies(description: dict | list | str) -> bool:
    """Whether a data set's configuration (its JSON, parsed or not) draws validation galaxies."""
    if isinstance(description, str):
        description = json.loads(description)
    if isinstance(description, dict):
        if description.get("kind") == "real-galaxies" and description.get("split") == "validation":
            return True
        return any(uses_validation_galaxies(v) for v in description.values() if isinstance(v, (dict, list)))
    if isinstance(description, list):
        return any(uses_validation_galaxies(v) for v in description if isinstance(v, (dict, list)))
    return False


def training_config(preset: str, sources: str | None = None, galaxy_file: str | None = None) -> SimulationConfig:
    """:func:`simulation_config` for training: refuses anything that would draw validation galaxies."""
    config = simulation_config(preset, sources, galaxy_file)
    if uses_validation_galaxies(json.loads(config.to_json())):
        raise ValueError(f"preset {preset!r} (sources {sources or PRESET_SOURCES[preset]!r}) draws validation "
                         f"galaxies, which are never trained on; use preset 'galaxies' for real galaxies")
    return config


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated data set (recorded in its files)."""

    preset: ObservationPreset = field(default_factory=lambda: PRESETS["realistic"])
    lens_prior: LensPrior = field(default_factory=LensPrior)
    sources: SourceModel = field(default_factory=ProceduralSources)

    def to_json(self) -> str:
        preset = asdict(self.preset)
        if preset["interferometer"] is None:  # imaging presets: the JSON of the files written before it existed
            del preset["interferometer"]
        return json.dumps({"preset": preset, "lens_prior": asdict(self.lens_prior),
                           "sources": describe_sources(self.sources)}, sort_keys=True)


#: Kept for compatibility: a simulation is an :class:`lensinv.observation.Observation`.
Simulated = Observation


def lens_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of lens ``index`` in a data set made with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def magnification(lensed: np.ndarray, source: np.ndarray, image_grid: ImageGrid, source_grid: SourceGrid) -> float:
    """Total magnification: image flux over source flux (surface brightness times pixel area)."""
    src_flux = float(np.sum(source)) * source_grid.delta**2
    if src_flux <= 0:
        raise ValueError("source has no flux")
    return float(np.sum(lensed)) * image_grid.delta**2 / src_flux


def _padded_gaussian(fwhm: float, pixel_scale: float, size: int) -> np.ndarray:
    """Gaussian PSF out to +-4 sigma, zero-padded to ``size`` (so every lens stores the same shape
    and the PSF matrix holds no negligible entries)."""
    k = gaussian_psf(fwhm, pixel_scale)
    if k.shape[0] >= size:
        return gaussian_psf(fwhm, pixel_scale, size=size)
    out = np.zeros((size, size))
    o = (size - k.shape[0]) // 2
    out[o:o + k.shape[0], o:o + k.shape[0]] = k
    return out


def simulate(index: int, seed: int, config: SimulationConfig) -> Observation:
    """Simulate lens ``index`` of the data set ``(seed, config)``.

    Draws a lens and a source until the magnification reaches
    ``config.lens_prior.min_magnification``, then a PSF and the noise.
    """
    rng = lens_rng(seed, index)
    pre, prior = config.preset, config.lens_prior
    ig, sg = pre.image_grid, pre.source_grid
    for tries in range(1, prior.max_tries + 1):
        lens = prior.draw(rng)
        source = config.sources.draw(rng, sg)
        L = lensing_matrix(lens, ig, sg, pre.supersample)
        mu = magnification(L @ source.ravel(), source, ig, sg)
        if mu >= prior.min_magnification:
            break
    else:
        raise RuntimeError(f"lens {index}: no draw reached magnification {prior.min_magnification} "
                           f"in {prior.max_tries} tries")
    if pre.interferometer is not None:
        return _observe_visibilities(index, rng, pre, lens, source, L, mu, tries)
    psf, fwhm = None, 0.0
    if pre.psf_fwhm is not None:
        fwhm = rng.uniform(*pre.psf_fwhm)
        psf = _padded_gaussian(fwhm, ig.pixel_scale, pre.psf_size)
    op = LensOperator(L=L, image_grid=ig, source_grid=sg, lens=lens,
                      psf=None if psf is None else validate_kernel(psf), supersample=pre.supersample)
    clean = op.apply(source)
    if pre.snr is None:
        sigma, snr, image = 0.0, math.inf, clean
    else:
        snr = math.exp(rng.uniform(math.log(pre.snr[0]), math.log(pre.snr[1])))
        sigma = float(clean.max()) / snr
        image = clean + rng.normal(0.0, sigma, clean.shape)
    return Observation(index=index, lens=lens, source=source, image=image, sigma=sigma, psf=psf, psf_fwhm=fwhm,
                       snr=snr, magnification=mu, image_grid=pre.image_grid, source_grid=pre.source_grid,
                       supersample=pre.supersample, tries=tries, _operator=op)


def _observe_visibilities(index: int, rng: np.random.Generator, pre: ObservationPreset, lens: Lens,
                          source: np.ndarray, L, mu: float, tries: int) -> Observation:
    """The interferometric observation of :func:`simulate`: visibilities of ``pb L s`` with thermal
    noise of one sigma per real and imaginary part, set by the dirty image's peak S/N."""
    from .visibility import VisibilityOperator, _primary_beam

    ig, sg = pre.image_grid, pre.source_grid
    cov = pre.interferometer.simulated().coverage
    op = VisibilityOperator(L=L, coverage=cov, image_grid=ig, source_grid=sg, lens=lens, supersample=pre.supersample,
                            primary_beam=_primary_beam(pre.interferometer.primary_beam_map(ig), ig))
    clean = op.apply(source)
    clean_dirty = op.dirty(clean, 1.0)
    if pre.snr is None:
        sigma, snr, vis, image = 0.0, math.inf, clean, clean_dirty.image
    else:
        snr = math.exp(rng.uniform(math.log(pre.snr[0]), math.log(pre.snr[1])))
        # a dirty-image pixel's noise is sigma / sqrt(n_vis) (uniform weights): clean_dirty.sigma is 1 / sqrt(n_vis)
        sigma = float(clean_dirty.image.max()) / snr / clean_dirty.sigma
        vis = clean + sigma * (rng.standard_normal(cov.n_vis) + 1j * rng.standard_normal(cov.n_vis))
        image = op.dirty(vis, sigma).image
    return Observation(index=index, lens=lens, source=source, image=image, sigma=sigma, psf=None, psf_fwhm=0.0,
                       snr=snr, magnification=mu, image_grid=ig, source_grid=sg, supersample=pre.supersample,
                       tries=tries, visibilities=vis, coverage=cov, primary_beam=op.primary_beam, _operator=op)
