"""Fit the lens model by maximising the Bayesian evidence of the pixelated source inversion.

The semilinear method (Warren & Dye 2003; Suyu et al. 2006): for given lens parameters the source
pixels (and, optionally, the amplitudes of the lens galaxy's light profiles) are linear and are
marginalised analytically by :func:`baselines.invert`; the log evidence ``log P(d | lens)`` (with
the regularization strength ``lam`` set by the evidence, see below) is then maximised over the
non-linear lens parameters with :mod:`scipy.optimize`.

Comparability. Within a stage the source grid (its side and field of view), the mask, the
regularization form, the lens-light basis (its widths and shape; it moves with the lens centre)
and the amplitudes' prior are fixed, and every source pixel of the grid is an unknown
(``unknowns="all"``: pixels no ray reaches are held by the prior alone), so each evaluation is
the marginal likelihood of the data under one fixed prior and the values can be compared across
lens parameters. ``lam`` is fixed within each Nelder-Mead run at its optimum for the run's
starting lens (``lam_mode="fixed"``, the default: every evaluation of a run then has the same
prior; the reported evidence is at the optimised ``lam``), or re-optimised at every evaluation
(``lam_mode="optimise"``: the evidence is then a function of the lens alone, the maximum over
``lam`` of one fixed family, at the cost of about three factorisations per evaluation).

Stages (no starting guess needed):

0. Geometry: the lens centre from the light (the lens galaxy's peak with ``lens_light``, else the
   centroid of the significant residual light) and a first Einstein radius, the flux-weighted
   median radius of the significant residual light (the arcs) about that centre.
1. Coarse: the image binned to about ``FitConfig.coarse_pixel`` (an odd factor; the data are
   block means, the PSF the kernel boxed and resampled), a small source grid
   (``FitConfig.coarse_source_n`` pixels, a field of view set by the ring's radius) and one
   sub-pixel per binned pixel: a scan over centre candidates (without lens light: the arcs' flux
   centroid, the centre of the circle through them, the image's centre and, where the arcs
   fall into separate images, their mean position and for a double the point an isothermal
   lens implies from their flux ratio), ``theta_E`` and the ellipticity (``SCAN_E``, q down
   to 0.35), then short Nelder-Mead runs over all parameters from the best scan points of
   ``COARSE_STARTS`` different basins and, where the arcs fall into two or more images, from
   up to ``POINT_STARTS`` lenses fitted to the images' positions as one point source's
   (:func:`_point_starts`: a smooth objective that finds the strongly sheared and very flattened
   lenses the scan has no point near), continued from the best two (successive halving: the
   evidence's basin in ``theta_E`` is a few per cent wide, and the scan's best point often lies
   in a neighbouring, worse one). Here the source grid sits on each lens's centre
   (a constant deflection, :class:`lensinv.Shift`, which nothing observable depends on), so a
   candidate far from the image's centre needs no wider, coarser grid for every lens.
2. Refinement on the full source grid (placed on the source: the significant pixels traced back
   to the source plane through the coarse lens, and again through the medium stage's before the
   original pixels; fixed from there, or with ``FitConfig.follow_grid`` carried with the lens
   centre's ray), Nelder-Mead restarted from its own optimum
   (the EPL's slope is freed here); the first run on the coarse stage's binned image
   (``FitConfig.medium``), the restart on the original pixels, there by default a Newton step to
   the maximum of the quadratic that stage 3 fits (``FitConfig.newton``).
3. Uncertainties: the curvature of the log evidence at the optimum (Laplace approximation), from
   a least-squares quadratic through evaluations scattered over the region where it drops by a
   few nats (steps adapted to about one nat per axis; where it is not negative definite the
   optimum is no maximum, and the fit climbs on from there first, :func:`_climb`, at most
   ``CLIMB_ROUNDS`` times), plus the spread of the optimum over
   ``FitConfig.grid_systematics`` other source grids (moved by half a pixel or with a different
   pixel count: a choice the data do not make, which moves the optimum by more than the
   curvature's errors on bright, structured sources), propagated to the reported parameters
   with their Jacobian.
4. Posterior (``FitConfig.posterior_steps``, off by default): emcee walkers started from the
   curvature's Gaussian sample the log evidence (``lam`` fixed) under a uniform prior within the
   fit's bounds (:mod:`baselines.posterior`, which says why emcee); the samples' spread then
   replaces the curvature's in ``params_std``.

Lens light: a multi-Gaussian expansion (:class:`MGELight`), Gaussians of fixed widths centred on
the lens centre, in groups of widths each with its own axis ratio and orientation (fitted to the
light alone from its second moments on, unless given), convolved with the PSF, and a uniform sky
level. In the geometry stage the light is fitted alone with non-negative Gaussian amplitudes
(bounded least squares), first on every pixel, then without the significant excess it leaves
(the arcs, neighbours); the arcs are then the residual light that stands out of the residual's
own median and robust spread (a bright galaxy's smooth misfit is many sigma when smoothed) and
exceeds ``ARC_CONTRAST`` of the galaxy's light. The Gaussians that fit kept (non-zero) and the
sky are the columns solved jointly with the source in the same linear system, with a weak
Gaussian prior ``N(0, light_prior_std^2)`` (see :mod:`baselines.normal_equations`): the evidence
includes them, and there the amplitudes may be negative.

Masks: noise values that are non-finite, ``<= 0`` or at least ``1e6`` times the median, and
non-finite data, mark masked pixels (:func:`bad_pixel_mask`); a user mask (True = use) is
combined with it; :func:`annular_mask` is a helper.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Union

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy import ndimage
from scipy.signal import fftconvolve

import lensinv
from lensinv.validate import finite_float, int_at_least, positive_float
from lensinv.grids import ImageGrid, SourceGrid
from lensinv.psf import kernel_fwhm, validate_kernel

from .inversion import InversionResult, invert
from .posterior import PosteriorSamples, sample_posterior
from .regularization import Regularization, get_regularization
from .solvers import NotPositiveDefiniteError

log = logging.getLogger(__name__)

__all__ = ["FitConfig", "FitProgress", "LensFit", "LightFit", "MGELight", "annular_mask", "bad_pixel_mask", "fit_lens",
           "fit_light"]

#: noise values at least this many times the median mark masked pixels (DESIGN.md)
HUGE_NOISE_FACTOR = 1e6
PROFILES = ("SIE", "EPL")
#: the coarse stage bins the image no further than this many binned pixels across the ring's radius
MIN_RING_PIXELS = 8
#: lensed light must exceed this fraction of the lens galaxy's modelled light to locate the arcs
ARC_CONTRAST = 0.1
#: a group of significant pixels with less flux than this fraction of the brightest group's is
#: no lensed image (see ``_images``)
MIN_IMAGE_FLUX = 0.02
#: ellipticities |e| the coarse scan tries (q = (1 - e) / (1 + e))
SCAN_E = (0.0, 0.08, 0.16, 0.24, 0.32, 0.40, 0.48)
#: scan points (from different basins) the coarse stage starts Nelder-Mead from
COARSE_STARTS = 6
#: further coarse starts from the lensed images' positions (:func:`_point_starts`): at most this
#: many, the best by coarse log evidence
POINT_STARTS = 2
#: the images' positional uncertainty (image pixels) in the point-image fit, and the chi^2 per
#: image a solution may have (2 coordinates each; an extended arc's or a cut-off image's centroid
#: is no exact conjugate point)
POINT_SIGMA_PIXELS = 2.0
POINT_CHI2_PER_IMAGE = 4.0
#: the magnification (its larger singular value) the point-image fit's residual is capped at:
#: next to a critical curve the linearised image-plane offset means nothing
POINT_MAGNIFICATION_CAP = 30.0
#: the point-image fit's weak priors: ellipticity components, shear components, and the centre
#: (a fraction of the start's ring radius about the start's centre): a double fixes two of the
#: seven parameters, a quad six
POINT_PRIOR_E, POINT_PRIOR_SHEAR, POINT_PRIOR_CENTRE = 0.5, 0.15, 0.25
#: the full-resolution Newton refinement (``FitConfig.newton``): a step to the fitted quadratic's
#: maximum is trusted within this many times sqrt(dim) axis steps (about one nat each) of its
#: centre, the ball the quadratic was sampled in, and the quadratic refitted at most this many times
#: (6: validation lens 13's medium optimum lay 30-70 full-resolution axis steps away; with 3
#: quadratics and 4 doublings the refinement was still climbing and fell back to Nelder-Mead)
NEWTON_RADIUS = 1.0
NEWTON_ITERATIONS = 6
#: a shortened Newton step that gained goes on along its direction, doubled at most this many times
#: (a step of 2**8 radii at most)
NEWTON_LINE_DOUBLINGS = 8
#: nats: a shortened step that gains less ends the refinement (the evidence's noise and flat
#: directions, not a distant maximum)
NEWTON_GAIN = 1.0
#: where the curvature at the refinement's optimum is not negative definite, at most this many
#: climbs (:func:`_climb`) from there, each followed by a new curvature
CLIMB_ROUNDS = 2
#: the refinement's source-grid margins tried, in units of ``FitConfig.source_margin`` (_chosen_grid)
SOURCE_MARGIN_FACTORS = (1.0, 1.3, 1.6, 2.0)


# --------------------------------------------------------------------------------------------------
# masks


def bad_pixel_mask(sigma: Union[float, np.ndarray], image: Optional[np.ndarray] = None,
                   huge: float = HUGE_NOISE_FACTOR) -> np.ndarray:
    """Pixels that hold data (True = use): finite noise ``> 0`` below ``huge`` times the median.

    Parameters
    ----------
    sigma : float or ndarray
        Noise standard deviation (image units), scalar or per pixel. Non-finite values, values
        ``<= 0`` and values ``>= huge * median`` (median over the finite positive values) mark
        masked pixels, as data sets do with 1e8 or 1e16.
    image : ndarray, optional
        The data: non-finite values are masked too. Gives the shape for a scalar ``sigma``.
    huge : float
        The factor over the median noise from which a pixel counts as masked (> 1).

    Returns
    -------
    ndarray of bool
    """
    huge = finite_float("huge", huge)
    if huge <= 1:
        raise ValueError(f"huge must be > 1, got {huge!r}")
    sig = np.asarray(sigma, dtype=np.float64)
    if image is not None:
        img = np.asarray(image, dtype=np.float64)
        sig = np.broadcast_to(sig, img.shape) if sig.ndim == 0 else sig
        if sig.shape != img.shape:
            raise ValueError(f"sigma must be a scalar or have the image's shape {img.shape}, got {sig.shape}")
    good = np.isfinite(sig) & (sig > 0)
    if not good.any():
        raise ValueError("sigma has no finite positive value: every pixel would be masked")
    med = float(np.median(sig[good]))
    good &= sig < huge * med
    if image is not None:
        good &= np.isfinite(img)
    return np.array(good, dtype=bool)


def annular_mask(image_grid: ImageGrid, r_in: float, r_out: float,
                 center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Pixels whose centres lie in the annulus ``r_in <= r < r_out`` (arcsec) about ``center``.

    Returns a ``(n, n)`` bool array (True = use).
    """
    r_in, r_out = finite_float("r_in", r_in), finite_float("r_out", r_out)
    if not 0 <= r_in < r_out:
        raise ValueError(f"r_in and r_out must satisfy 0 <= r_in < r_out (arcsec), got {r_in!r}, {r_out!r}")
    cx, cy = (finite_float("center[0]", center[0]), finite_float("center[1]", center[1]))
    x, y = image_grid.coordinates()
    r = np.hypot(x - cx, y - cy)
    return (r >= r_in) & (r < r_out)


# --------------------------------------------------------------------------------------------------
# lens light


@dataclass(frozen=True)
class MGELight:
    """Linear lens-light model: a multi-Gaussian expansion centred on the lens centre.

    Component ``k`` is ``exp(-r^2 / (2 s_k^2))`` (unit central surface brightness), with
    ``r^2 = q x'^2 + y'^2 / q`` in the frame rotated by ``phi`` (the SIE's intermediate-axis
    convention) and widths ``s_k`` log-spaced from ``sigma_min`` to ``sigma_max``; each is
    averaged over ``supersample^2`` sub-pixels and convolved with the PSF. The amplitudes (image
    units) are linear unknowns of the inversion.

    The components fall into ``groups`` consecutive ranges of width (equal counts), each with its
    own axis ratio and angle: elliptical galaxies' isophotes change shape with radius (SLACS
    1430+4105: q 0.95 inside 0.3", 0.69 outside), and one shape for all of them leaves a
    quadrupole misfit of thousands of chi^2 right where the arcs are (measured: 44,269 against
    39,655 over 15,188 pixels for one and two groups, light alone, arcs masked).

    Parameters
    ----------
    n_components : int
        Number of Gaussians (>= 1).
    sigma_min, sigma_max : float
        Smallest and largest width, arcsec.
    q : float, optional
        Axis ratio in (0, 1] of every group; None fits each group's (from the light's second
        moments on).
    phi : float, optional
        Position angle of the major axis (radians, counter-clockwise from +x) of every group; None
        fits each group's.
    groups : int
        Groups of components with their own shape (1 to ``n_components``).
    supersample : int
        Sub-pixels per pixel side for the profiles.
    sky : bool
        Add a uniform sky level (one more column, of ones, not convolved; its amplitude may
        have either sign): cut-outs often keep a residual sky pedestal, which the Gaussians
        cannot fit and which would otherwise be taken for lensed light everywhere.
    """

    n_components: int = 12
    sigma_min: float = 0.02
    sigma_max: float = 3.0
    q: Optional[float] = None
    phi: Optional[float] = None
    supersample: int = 3
    sky: bool = True
    groups: int = 2

    def __post_init__(self) -> None:
        int_at_least("n_components", self.n_components, 1)
        int_at_least("groups", self.groups, 1)
        if self.groups > self.n_components:
            raise ValueError(f"groups must be at most n_components ({self.n_components}), got {self.groups!r}")
        lo, hi = positive_float("sigma_min", self.sigma_min), positive_float("sigma_max", self.sigma_max)
        if hi < lo:
            raise ValueError(f"sigma_max must be >= sigma_min, got {self.sigma_max!r} < {self.sigma_min!r}")
        if self.q is not None and not 0 < finite_float("q", self.q) <= 1:
            raise ValueError(f"q must be in (0, 1] or None, got {self.q!r}")
        if self.phi is not None:
            finite_float("phi", self.phi)
        int_at_least("supersample", self.supersample, 1)
        if not isinstance(self.sky, bool):
            raise ValueError(f"sky must be True or False, got {self.sky!r}")

    @property
    def widths(self) -> np.ndarray:
        """The Gaussians' widths (arcsec)."""
        return np.geomspace(self.sigma_min, self.sigma_max, self.n_components)

    @property
    def n_columns(self) -> int:
        """Columns of :meth:`basis`: the Gaussians, then the sky where modelled."""
        return self.n_components + int(self.sky)

    @property
    def group_of(self) -> np.ndarray:
        """``(n_components,)`` the group of each component (narrowest first)."""
        return np.repeat(np.arange(self.groups), [len(a) for a in np.array_split(np.arange(self.n_components),
                                                                                   self.groups)])

    def shapes(self, q=None, phi=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per group axis ratio and angle: ``q``, ``phi`` (scalars or one per group) override the
        model's, which override round (q 1, phi 0)."""
        q = self.q if q is None else q
        phi = self.phi if phi is None else phi
        out = []
        for name, v, default in (("q", q, 1.0), ("phi", phi, 0.0)):
            a = np.broadcast_to(np.asarray(default if v is None else v, dtype=np.float64), (self.groups,)) \
                if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64)
            if a.shape != (self.groups,):
                raise ValueError(f"{name} must be a number or one per group ({self.groups}), got {v!r}")
            out.append(tuple(float(t) for t in a))
        return out[0], out[1]

    def basis(self, image_grid: ImageGrid, center: tuple[float, float], psf: Optional[np.ndarray],
              q=None, phi=None) -> np.ndarray:
        """The ``(n_pix, n_columns)`` columns: each profile on the image grid, PSF-convolved
        (then the sky's column of ones where ``sky``).

        ``q`` and ``phi`` (a number, or one per group) override the model's (needed where those are
        None); ``center`` in arcsec.
        """
        qs, phis = self.shapes(q, phi)
        n, ss, d = image_grid.n, self.supersample, image_grid.delta
        off = ((np.arange(ss) + 0.5) / ss - 0.5) * d
        ax = image_grid.axis
        xs = (ax[None, :, None, None] + off[None, None, None, :]) - center[0]
        ys = (ax[:, None, None, None] + off[None, None, :, None]) - center[1]
        cols = np.ones((n * n, self.n_columns))
        group, widths = self.group_of, self.widths
        for g in range(self.groups):
            c, s = math.cos(phis[g]), math.sin(phis[g])
            xr = c * xs + s * ys
            yr = -s * xs + c * ys
            r2 = qs[g] * xr**2 + yr**2 / qs[g]  # (n, n, ss, ss)
            for k in np.flatnonzero(group == g):
                img = np.exp(-0.5 * r2 / widths[k]**2).mean(axis=(2, 3))
                if psf is not None:
                    img = fftconvolve(img, psf, mode="same")
                cols[:, k] = img.reshape(-1)
        return cols


# --------------------------------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_lens` (fixed within a fit).

    Parameters
    ----------
    coarse_source_n : int
        Source-grid side (pixels) of the coarse stage.
    source_n : int
        Source-grid side of the refinement when no ``source_grid`` is given (the grid is placed
        on the source: ``source_margin``). On grids centred on the origin 32 pixels
        under-resolved bright sources (validation lens 18: the true lens 2,235 nats below the
        fitted one); placed on the source, 32 pixels prefer the truth by 935 nats and the fit
        finds it (-0.22% in theta_E). 48 costs 1.4-1.7 (192 x 192 pixels, the sparse route) to
        3.3 times as much per evaluation (SLACS 2303+1422's 101 x 101 pixels, the dense product,
        which grows as the square of the source pixels).
    coarse_supersample, supersample : int
        Sub-pixels per image-pixel side for the ray tracing in the coarse stage and after.
    source_fov_factor : float
        Coarse source field of view in units of the largest candidate ring radius (the grid sits
        on each lens's centre: ``_Problem.lens``). Kept small on purpose: a source plane as wide
        as the ring admits the "demagnified image" solutions of pixelated sources (a too small
        ``theta_E`` whose source is a shrunken copy of the ring), whose evidence can rival the true lens's (measured: ``theta_E`` 0.42 against
        0.90 arcsec at a field of 1.6 ring radii, a difference of 5 nats; 8,700 nats in favour of
        the true lens at 1.0).
    source_margin : float
        Full source field of view: the extent of the significant pixels' flux traced through the
        lens (2nd to 98th percentiles, the larger side; the grid centred on it), times this or
        1.3, 1.6 or 2 times this, whichever the evidence prefers (``SOURCE_MARGIN_FACTORS``).
    coarse_pixel : float
        Pixel size (arcsec) of the coarse stage: the image is binned by the odd factor nearest
        ``coarse_pixel / pixel`` (1: not binned; nor where fewer than 16 binned pixels a side
        would remain). Binning 3 x 3 makes an evaluation about 10 times cheaper (192 x 192 pixels
        of 0.04 arcsec, 15 x 15 PSF); the refinement always works on the original pixels. 0: never.
    lam_mode : {"fixed", "optimise"}
        ``lam`` fixed in each Nelder-Mead run at its evidence maximum for the run's starting lens
        (``"fixed"``, about 2.7 times cheaper per evaluation; the reported evidence is at the
        optimised ``lam``), or re-optimised at every evaluation (module docstring).
    coarse_evaluations, refine_evaluations : int
        Most evidence evaluations of the coarse stage's Nelder-Mead runs (half shared by the short
        runs from ``COARSE_STARTS`` scan points and the point-image starts, a quarter for each of
        the best two), and of each refinement run (half that for each climb, ``_climb``).
    medium : bool
        Run the first of the refinement's two Nelder-Mead runs on the coarse stage's binned image
        (with the refinement's source grid and supersampling), the second on the original pixels
        (where the coarse stage was binned at all). An evaluation there is 3-8 times cheaper (SLACS
        cut-outs, 61 x 61 PSF, 3 x 3 binning) and the first run takes most of the evaluations.
    newton : bool
        With ``medium``: the refinement on the original pixels is Newton steps to the maximum of
        the quadratic fitted for the uncertainties (:func:`_newton_refine`; the quadratic fitted again
        where a step leaves the region it was sampled in) instead of a second Nelder-Mead run. On
        the SLACS cut-outs refinement and curvature took 189 and 353 evaluations, against 400-500
        for the Nelder-Mead run and about 250 for the curvature after it.
    follow_grid : bool
        The refinement's source grid, placed about a lens, moves with the lens centre's ray (a
        constant deflection, which nothing observable depends on) rather than staying put in the
        source plane: a lens whose centre differs from the placing lens's is then compared on a
        grid at the same place relative to its own source plane (as the coarse stage's grids
        are). Off by default: on the 20 simulated validation lenses it found better optima (12
        accurate against 11) but reported overconfident intervals (66.4% of the true values inside
        3 sigma against 76.4%; ``docs/real_observations.md``).
    uncertainties : bool
        Estimate the curvature of the log evidence at the optimum.
    grid_systematics : int
        Source grids, each moved by half a pixel or with a different pixel count, over which the
        optimum's spread is measured and added to the curvature's covariance (0: not; see
        ``_grid_systematics``). Needs ``uncertainties``.
    posterior_steps : int
        Steps per walker of an emcee run that samples the posterior of the lens parameters (the
        log evidence with ``lam`` fixed, a uniform prior within the fit's bounds) from the
        curvature's Gaussian (:mod:`baselines.posterior`); 0: not sampled, the uncertainties are
        the Laplace approximation's. Sampled, ``params_std`` are the samples' spread (plus the
        grid term) and ``LensFit.posterior`` holds them. Costs ``walkers x steps`` full-resolution
        evaluations (0.5-1.5 s each on the SLACS cut-outs). Needs ``uncertainties``.
    posterior_walkers : int
        Walkers of that run (even, at least twice the parameters plus 2); 0: that minimum.
    light_prior_std : float, optional
        Prior standard deviation of the lens-light amplitudes (image units); None: 100 times the
        largest absolute datum in the mask.
    significance : float
        Threshold (in units of the smoothed noise) for the pixels that locate the arcs.
    blas_threads : int, optional
        BLAS threads during the fit (threadpoolctl, where installed): the factorisations are small,
        and one thread is fastest and behaves on a shared machine. None leaves them alone.
    numba_threads : int, optional
        Numba threads during the fit (restored after). The per-evaluation kernels are small: on a
        busy 2-core machine one thread was 3-4 times faster than two (64x64 image, 24x24 source:
        70-85 ms against 300 ms per evaluation, load average 5). None leaves them alone.
    """

    coarse_source_n: int = 16
    source_n: int = 32
    coarse_supersample: int = 1
    supersample: int = 2
    source_fov_factor: float = 1.0
    source_margin: float = 1.25
    coarse_pixel: float = 0.12
    lam_mode: str = "fixed"
    coarse_evaluations: int = 1000
    refine_evaluations: int = 500
    medium: bool = True
    newton: bool = True
    follow_grid: bool = False
    uncertainties: bool = True
    grid_systematics: int = 4
    posterior_steps: int = 0
    posterior_walkers: int = 0
    light_prior_std: Optional[float] = None
    significance: float = 3.0
    blas_threads: Optional[int] = 1
    numba_threads: Optional[int] = 1

    def __post_init__(self) -> None:
        for name in ("coarse_source_n", "source_n"):
            int_at_least(name, getattr(self, name), 4)
        for name in ("coarse_supersample", "supersample", "coarse_evaluations", "refine_evaluations"):
            int_at_least(name, getattr(self, name), 1)
        for name in ("source_fov_factor", "source_margin", "significance"):
            positive_float(name, getattr(self, name))
        if not (math.isfinite(self.coarse_pixel) and self.coarse_pixel >= 0):
            raise ValueError(f"coarse_pixel must be a finite number >= 0 (arcsec), got {self.coarse_pixel!r}")
        if self.lam_mode not in ("optimise", "fixed"):
            raise ValueError(f"lam_mode must be 'optimise' or 'fixed', got {self.lam_mode!r}")
        if self.light_prior_std is not None:
            positive_float("light_prior_std", self.light_prior_std)
        int_at_least("grid_systematics", self.grid_systematics, 0)
        int_at_least("posterior_steps", self.posterior_steps, 0)
        int_at_least("posterior_walkers", self.posterior_walkers, 0)
        if self.posterior_steps == 1:
            raise ValueError("posterior_steps must be 0 (no sampling) or at least 2, got 1")
        if self.posterior_walkers % 2:
            raise ValueError(f"posterior_walkers must be even (0: the minimum), got {self.posterior_walkers}")
        if self.posterior_steps and not self.uncertainties:
            raise ValueError("posterior_steps needs uncertainties=True (the walkers start from the curvature)")
        for name in ("medium", "newton", "follow_grid"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("blas_threads", "numba_threads"):
            if getattr(self, name) is not None:
                int_at_least(name, getattr(self, name), 1)


@dataclass(frozen=True)
class FitProgress:
    """What a progress callback receives after every evidence evaluation."""

    stage: str
    evaluations: int
    log_evidence: float
    best_log_evidence: float


@dataclass(frozen=True, eq=False)
class LensFit:
    """The outcome of :func:`fit_lens`.

    Attributes
    ----------
    lens : lensinv.Lens
        Best-fit lens (main profile, then the external shear if fitted).
    params : dict
        ``theta_E, q, phi, center_x, center_y, gamma, gamma_phi`` (+ ``slope`` for the EPL), arcsec
        and radians, lensinv/lenstronomy conventions (``gamma`` is the external shear, ``slope`` the
        EPL's logarithmic slope); the keys of ``fit.json`` (DESIGN.md).
    params_std : dict
        Their standard deviations (NaN where not estimated): from ``covariance``, i.e. the
        curvature of the log evidence plus the source grid's systematic part.
    covariance : ndarray or None
        Covariance of the fitted vector ``fit_names`` (Laplace approximation).
    fit_names : tuple of str
        The optimiser's parameters: ``theta_E, e1, e2, center_x, center_y[, g1, g2][, slope]``.
    inversion : InversionResult
        The inversion at the best fit on the full source grid (``source``, ``lam``,
        ``log_evidence``; its ``chi2`` includes the light amplitudes' weak prior term).
    source_grid : SourceGrid
        The full stage's fixed source grid, centred on ``source_center``.
    source_center : tuple of float
        ``(x, y)`` arcsec: where ``source_grid``'s centre lies in the source plane (the fit places
        the grid on the source; ``(0, 0)`` for a given ``source_grid``). ``source`` is the source
        of ``lensinv.operator(lensinv.Lens(*lens.components, lensinv.Shift(*source_center)),
        image_grid, source_grid, ...)``: the Shift moves the traced positions by minus the centre.
    log_evidence : float
    chi2 : float
        Data misfit in the mask, ``sum(((model - d) / sigma)^2)``.
    n_pixels : int
        Pixels fitted.
    model : ndarray
        ``(n, n)`` model image (lensed source plus lens light).
    lens_light : ndarray or None
        ``(n, n)`` lens-light model image.
    light_amplitudes : ndarray or None
        ``(MGELight.n_columns,)`` amplitudes of the light basis (image units): the Gaussians',
        then the sky's. A Gaussian that the light-alone fit of the geometry stage (non-negative
        amplitudes) left at zero stays out of the joint inversion: its amplitude is 0.
    light_q, light_phi : tuple of float or None
        Axis ratio and angle (radians) of each group of the light basis (``MGELight.groups``,
        narrowest Gaussians first).
    mask : ndarray
        ``(n, n)`` pixels used.
    evaluations : dict
        Evidence evaluations per stage.
    timings : dict
        Seconds per stage and in total.
    hessian_ok : bool
        Whether the fitted curvature was negative definite (else its flat directions were given an
        uncertainty of about three axis steps; see ``_covariance``).
    covariance_grid : ndarray or None
        The part of ``covariance`` from the source grid's placement and pixel size (the spread of
        the optimum over ``FitConfig.grid_systematics`` other grids); None where not estimated.
    params_std_curvature : dict or None
        The standard deviations from the curvature alone (the statistical part, without
        ``covariance_grid``); None where not estimated.
    posterior : PosteriorSamples or None
        With ``FitConfig.posterior_steps``: samples of the reported parameters (the columns
        ``params``' keys; angles unwrapped about the best fit), by emcee; ``autocorr_steps``
        are per sampled parameter (``fit_names``). None: not sampled.
    """

    lens: lensinv.Lens
    params: dict
    params_std: dict
    covariance: Optional[np.ndarray]
    fit_names: tuple
    inversion: InversionResult
    source_grid: SourceGrid
    log_evidence: float
    chi2: float
    n_pixels: int
    model: np.ndarray
    lens_light: Optional[np.ndarray]
    light_amplitudes: Optional[np.ndarray]
    light_q: Optional[tuple]
    light_phi: Optional[tuple]
    mask: np.ndarray
    evaluations: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    hessian_ok: bool = True
    covariance_grid: Optional[np.ndarray] = None
    params_std_curvature: Optional[dict] = None
    posterior: Optional[PosteriorSamples] = None
    source_center: tuple = (0.0, 0.0)

    @property
    def chi2_per_pixel(self) -> float:
        """``chi2 / n_pixels``."""
        return self.chi2 / self.n_pixels

    @property
    def source(self) -> np.ndarray:
        """The most probable source (2-D, ``source_grid``)."""
        return self.inversion.source


# --------------------------------------------------------------------------------------------------
# parameters


def _q_phi(e1: float, e2: float) -> tuple[float, float]:
    e = math.hypot(e1, e2)
    return (1.0 - e) / (1.0 + e), 0.5 * math.atan2(e2, e1)


def _gamma_phi(g1: float, g2: float) -> tuple[float, float]:
    return math.hypot(g1, g2), 0.5 * math.atan2(g2, g1)


@dataclass(frozen=True)
class _Space:
    """The optimiser's vector: ``theta_E, e1, e2, center_x, center_y[, g1, g2][, slope]``."""

    shear: bool
    epl: bool

    @property
    def names(self) -> tuple[str, ...]:
        return (("theta_E", "e1", "e2", "center_x", "center_y") + (("g1", "g2") if self.shear else ())
                + (("slope",) if self.epl else ()))

    def bounds(self, fov: float) -> list[tuple[float, float]]:
        b = [(0.02, fov), (-0.8, 0.8), (-0.8, 0.8), (-fov / 2, fov / 2), (-fov / 2, fov / 2)]
        if self.shear:
            b += [(-0.4, 0.4), (-0.4, 0.4)]
        if self.epl:
            b += [(1.3, 2.8)]
        return b

    def steps(self, theta: float) -> np.ndarray:
        s = [0.05 * theta, 0.08, 0.08, 0.04 * theta, 0.04 * theta] + ([0.04, 0.04] if self.shear else [])
        return np.array(s + ([0.1] if self.epl else []))

    def lens(self, x: np.ndarray) -> lensinv.Lens:
        q, phi = _q_phi(x[1], x[2])
        center = (float(x[3]), float(x[4]))
        if self.epl:
            main = lensinv.EPL(theta_E=float(x[0]), gamma=float(x[-1]), q=q, phi=phi, center=center)
        else:
            main = lensinv.SIE(theta_E=float(x[0]), q=q, phi=phi, center=center)
        if not self.shear:
            return lensinv.Lens(main)
        g, gphi = _gamma_phi(x[5], x[6])
        return lensinv.Lens(main, lensinv.ExternalShear(gamma=g, phi=gphi))

    def report(self, x: np.ndarray) -> dict[str, float]:
        q, phi = _q_phi(x[1], x[2])
        out = {"theta_E": float(x[0]), "q": q, "phi": phi, "center_x": float(x[3]), "center_y": float(x[4]),
               "gamma": 0.0, "gamma_phi": 0.0}
        if self.shear:
            out["gamma"], out["gamma_phi"] = _gamma_phi(x[5], x[6])
        if self.epl:
            out["slope"] = float(x[-1])
        return out


def _wrap_angle(d: float) -> float:
    """An angle difference of a position angle (period pi) into [-pi/2, pi/2)."""
    return (d + math.pi / 2) % math.pi - math.pi / 2


# --------------------------------------------------------------------------------------------------
# the evidence as a function of the lens


class _NormalOnly:
    """A ``LensOperator`` seen through ``apply``, ``adjoint`` and ``normal_matrix`` only, so the
    inversion forms ``L^T (F^T W F) L`` and never the product ``F L`` (which cost as much again
    per evaluation: 64x64 image, 24x24 source)."""

    def __init__(self, op: lensinv.LensOperator) -> None:
        self.op, self.shape, self.source_grid = op, op.shape, op.source_grid

    def apply(self, s: np.ndarray) -> np.ndarray:
        return self.op.apply(s)

    def adjoint(self, d: np.ndarray) -> np.ndarray:
        return self.op.adjoint(d)

    def normal_matrix(self, weights: np.ndarray, unknowns: Optional[np.ndarray] = None, dense: bool = True):
        return self.op.normal_matrix(weights, unknowns=unknowns, dense=dense)


class _Problem:
    """Data, mask and fixed settings; evaluates the log evidence of lens-parameter vectors."""

    def __init__(self, image: np.ndarray, sigma: np.ndarray, use: np.ndarray, image_grid: ImageGrid,
                 psf: Optional[np.ndarray], form: Regularization, space: _Space,
                 light: Optional[MGELight], light_q: tuple, light_phi: tuple, light_std: float,
                 progress: Optional[Callable[[FitProgress], None]]) -> None:
        self.image, self.sigma, self.use, self.grid, self.psf = image, sigma, use, image_grid, psf
        self.form, self.space, self.light = form, space, light
        self.light_q, self.light_phi, self.light_std = light_q, light_phi, light_std
        #: (n_columns,) bool: the light basis's columns in the joint inversion (None: all)
        self.light_columns: Optional[np.ndarray] = None
        self.progress = progress
        self.evaluations: dict[str, int] = {}
        self.best = -math.inf
        self._basis_cache: dict = {}
        #: (x, y) arcsec of this problem's grid centre minus the fit's frame (a binned grid's trim)
        self.shift = (0.0, 0.0)

    def lens(self, space: "_Space", x: np.ndarray, centred: bool = False) -> lensinv.Lens:
        """The lens of parameter vector ``x`` (the fit's frame) in this problem's grid frame.

        ``centred``: with a constant deflection (:class:`lensinv.Shift`) that puts the source
        grid's centre where the lens centre's ray lands (the centre less the shear's deflection
        there; the main profile does not deflect its central ray). A uniform deflection is not
        observable, so this only places the finite source grid on the lens's source plane rather
        than on the image's centre, and every lens is compared on a grid at its own caustics."""
        if self.shift != (0.0, 0.0):
            x = np.array(x, dtype=np.float64)
            x[3] -= self.shift[0]
            x[4] -= self.shift[1]
        lens = space.lens(x)
        if not centred:
            return lens
        return lensinv.Lens(*lens.components, lensinv.Shift(*_centre_ray(lens)))

    def stage_lens(self, stage: "_Stage", x: np.ndarray) -> lensinv.Lens:
        """The lens a stage evaluates at ``x``: centred as the stage says, and with the stage's
        ``grid_offset`` as a further Shift (traced positions move by minus it: the grid by it). The
        offset is in the fit's frame; this problem's frame is ``shift`` from it (a binned grid's
        trim), and so is its source plane, less the constant deflection the shear (linear about
        each frame's origin) adds there: the Shift takes both, so that a sky point lands at the
        same place relative to the grid in either frame. A ``centred`` stage's grid already sits at
        the same place relative to the lens's source plane in either frame (the centre's ray), so
        its offset, from that ray, is taken as it is."""
        lens = self.lens(stage.space, x, stage.centred)
        if stage.grid_offset == (0.0, 0.0):
            return lens
        ox, oy = stage.grid_offset
        if self.shift != (0.0, 0.0) and not stage.centred:
            zero = np.zeros(1)
            fx, fy = stage.space.lens(x).raytrace(zero, zero)  # the fit frame's origin ...
            bx, by = lens.raytrace(zero - self.shift[0], zero - self.shift[1])  # ... here
            ox, oy = ox - float(fx[0] - bx[0]), oy - float(fy[0] - by[0])
        return lensinv.Lens(*lens.components, lensinv.Shift(ox, oy))

    def basis(self, center: tuple[float, float]) -> Optional[np.ndarray]:
        if self.light is None:
            return None
        key = (round(center[0], 12), round(center[1], 12))
        if key not in self._basis_cache:
            if len(self._basis_cache) > 64:
                self._basis_cache.clear()
            B = self.light.basis(self.grid, center, self.psf, self.light_q, self.light_phi)
            self._basis_cache[key] = B if self.light_columns is None else np.ascontiguousarray(B[:, self.light_columns])
        return self._basis_cache[key]

    def invert(self, lens: lensinv.Lens, source_grid: SourceGrid, supersample: int,
               lam: Optional[float] = None) -> tuple[InversionResult, lensinv.LensOperator, Optional[np.ndarray]]:
        op = lensinv.operator(lens, self.grid, source_grid, psf=self.psf, supersample=supersample)
        c = lens.components[0]
        B = self.basis((float(c.center[0]), float(c.center[1])))
        res = invert(_NormalOnly(op), self.image, self.sigma, self.form, lam=lam, mask=self.use, unknowns="all",
                     basis=B,
                     basis_std=None if B is None else self.light_std)
        return res, op, B

    def log_evidence(self, x: np.ndarray, stage: "_Stage") -> float:
        self.evaluations[stage.name] = self.evaluations.get(stage.name, 0) + 1
        try:
            res, _, _ = self.invert(self.stage_lens(stage, x), stage.source_grid, stage.supersample, stage.lam)
            value = float(res.log_evidence)
        except (ValueError, NotPositiveDefiniteError, np.linalg.LinAlgError) as exc:
            log.debug("no evidence at %s: %s", x, exc)
            value = -math.inf
        if not math.isfinite(value):
            value = -math.inf
        self.best = max(self.best, value)
        if self.progress is not None:
            self.progress(FitProgress(stage=stage.name, evaluations=sum(self.evaluations.values()),
                                      log_evidence=value, best_log_evidence=self.best))
        return value


def _centre_ray(lens: lensinv.Lens) -> tuple[float, float]:
    """Where the ray through the main profile's centre lands (arcsec, the lens's frame): the centre
    less the other components' deflection there (the main profile does not deflect its central ray)."""
    c = lens.components[0].center
    cx, cy = np.array([float(c[0])]), np.array([float(c[1])])
    sx, sy = lensinv.Lens(*lens.components[1:]).raytrace(cx, cy) if len(lens.components) > 1 else (cx, cy)
    return float(sx[0]), float(sy[0])


@dataclass(frozen=True)
class _Stage:
    name: str
    space: _Space
    source_grid: SourceGrid
    supersample: int
    lam: Optional[float] = None
    centred: bool = False  # the source grid on each lens's centre (_Problem.lens)
    grid_offset: tuple = (0.0, 0.0)  # arcsec, the fit's frame: the source grid's centre (a Shift);
    # with ``centred``, from the lens centre's ray


# --------------------------------------------------------------------------------------------------
# the coarse stage's binned image


def _bin_factor(pixel: float, coarse_pixel: float, radius: float = math.inf) -> int:
    """The odd number of image pixels per side binned into one for the coarse stage: the odd
    integer nearest ``coarse_pixel / pixel`` (1: no binning; odd, so a binned pixel is centred on
    an original one and the PSF resamples without a half-pixel shift), at most the odd integer
    that keeps ``MIN_RING_PIXELS`` binned pixels across the ring's radius ``radius`` (arcsec)."""
    if coarse_pixel <= 0:
        return 1
    b = max(1, 2 * int(round((coarse_pixel / pixel - 1.0) / 2.0)) + 1)
    if math.isfinite(radius):
        cap = int(radius / (MIN_RING_PIXELS * pixel))
        b = min(b, max(1, cap if cap % 2 else cap - 1))
    return b


def _binned_kernel(psf: np.ndarray, b: int) -> np.ndarray:
    """The PSF on ``b x b`` binned pixels: the kernel convolved with the ``b x b`` pixel box (a
    binned datum averages its pixels) and sampled every ``b`` pixels from its centre."""
    c = (psf.shape[0] - 1) // 2
    half = -(-(c + (b - 1) // 2) // b)  # ceil: binned pixels the widened kernel reaches
    pad = half * b - c
    boxed = np.clip(ndimage.uniform_filter(np.pad(psf, pad), size=b, mode="constant"), 0.0, None)
    centre = c + pad
    k = boxed[centre - half * b:centre + half * b + 1:b, centre - half * b:centre + half * b + 1:b]
    return k / k.sum()


def _binned_problem(prob: _Problem, b: int) -> _Problem:
    """The problem on ``b x b`` binned pixels: mean data, noise ``sqrt(sum sigma^2) / b^2``, a
    binned pixel used only where all its pixels are, the PSF by :func:`_binned_kernel`. A side
    not divisible by ``b`` loses its last rows and columns, which moves the grid's centre by
    ``shift`` (the problem's lenses are shifted back: the fit's frame is kept). Shares the
    evaluation counts and progress callback."""
    n, d = prob.grid.n, prob.grid.delta
    m = n // b
    k = m * b

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, n)[:k, :k].reshape(m, b, m, b)

    use = blocks(prob.use).all(axis=(1, 3)).reshape(-1)
    img = blocks(np.where(prob.use, prob.image, 0.0)).mean(axis=(1, 3)).reshape(-1)
    sig = np.sqrt((blocks(np.where(prob.use, prob.sigma, 1.0)) ** 2).sum(axis=(1, 3))).reshape(-1) / b**2
    psf = None if prob.psf is None else _binned_kernel(prob.psf, b)
    out = _Problem(np.where(use, img, 0.0), np.where(use, sig, 1.0), use, ImageGrid(m, b * d), psf, prob.form,
                   prob.space, prob.light, prob.light_q, prob.light_phi, prob.light_std, prob.progress)
    out.light_columns = prob.light_columns
    # pixel centres: original (i - (n - 1) / 2) d; binned J covers i = Jb .. Jb + b - 1
    out.shift = (-(n - k) * d / 2.0, -(n - k) * d / 2.0)
    out.evaluations = prob.evaluations
    return out


# --------------------------------------------------------------------------------------------------
# stage 0: geometry


def _psf_fwhm(psf: Optional[np.ndarray], pixel: float) -> float:
    """FWHM (arcsec) of the Gaussian with the kernel's second moment (one pixel without a PSF)."""
    return pixel if psf is None else kernel_fwhm(psf) * pixel


@dataclass(frozen=True)
class _Geometry:
    center: tuple[float, float]
    radius: float
    significant: np.ndarray  # (n, n) bool: the arcs' pixels
    flux: np.ndarray  # (n, n) their smoothed flux (zero elsewhere)
    light_q: tuple  # per group of the light basis
    light_phi: tuple
    from_light: bool  # the centre is the lens light's (else the arcs' flux centroid)
    light_columns: Optional[np.ndarray] = None  # the light basis's columns kept (non-zero alone)
    images: list = field(default_factory=list)  # the lensed images (x, y, flux), brightest first


def _light_shape(sm: np.ndarray, peak_ij: tuple[int, int]) -> tuple[float, float, tuple[float, float]]:
    """Axis ratio, angle and centroid (pixels, x then y) of the bright core around a peak, from
    second moments of the connected region above a quarter of the peak."""
    region, _ = ndimage.label(sm > 0.25 * sm[peak_ij])
    core = region == region[peak_ij]
    w = sm * core
    ii, jj = np.indices(sm.shape)
    tot = w.sum()
    yc, xc = float((w * ii).sum() / tot), float((w * jj).sum() / tot)
    dy, dx = ii - yc, jj - xc
    cxx, cyy, cxy = (w * dx * dx).sum() / tot, (w * dy * dy).sum() / tot, (w * dx * dy).sum() / tot
    ev, vec = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
    q = float(math.sqrt(max(ev[0], 1e-12) / max(ev[1], 1e-12)))
    phi = float(math.atan2(vec[1, 1], vec[0, 1]))
    return min(max(q, 0.2), 1.0), phi, (xc, yc)


def _light_solve(prob: _Problem, B: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative amplitudes of the light basis alone (weighted least squares with the
    amplitudes' prior, bounded-variable least squares on a square-root factor of the
    column-scaled normal matrix) on the pixels ``rows`` (flat bool), and their chi2 there. A galaxy's light is a sum of
    positive Gaussians: unconstrained amplitudes of the overlapping wide Gaussians ring with
    alternating signs of thousands of times the data (measured on SLACS 1430+4105), and the arcs
    found in the residual of that are no arcs. The sky's amplitude (last column, where modelled)
    has either sign."""
    wsq = np.where(rows, 1.0 / prob.sigma, 0.0)
    Bw = B * wsq[:, None]
    dw = prob.image * wsq
    m = B.shape[1]
    scale = np.sqrt(np.maximum(np.einsum("ij,ij->j", Bw, Bw), 1e-300))  # unit columns: better conditioned
    K = (Bw.T @ Bw + np.eye(m) / prob.light_std**2) / np.outer(scale, scale)
    rhs = (Bw.T @ dw) / scale
    lo = np.zeros(m)
    if prob.light is not None and prob.light.sky:
        lo[-1] = -np.inf
    e, U = np.linalg.eigh(0.5 * (K + K.T))
    e = np.maximum(e, e.max() * 1e-14)
    R = np.sqrt(e)[:, None] * U.T  # K = R^T R
    sol = scipy.optimize.lsq_linear(R, (U.T @ rhs) / np.sqrt(e), bounds=(lo, np.full(m, np.inf)), method="bvls")
    a = np.maximum(sol.x, lo) / scale  # BVLS may end a bound's width of rounding outside it (-4e-18 seen)
    r = dw - Bw @ a
    return a, float(r @ r)


def _light_shape_fit(prob: _Problem, center: tuple[float, float], q: tuple[float, ...], phi: tuple[float, ...],
                     rows: np.ndarray) -> tuple[tuple[float, float], tuple[float, ...], tuple[float, ...]]:
    """Centre and per group axis ratio and angle of the light basis that fit the light alone best
    on ``rows`` (Nelder-Mead over ``x, y`` and each group's ``e1, e2``; a shape given in the model
    stays fixed)."""
    light = prob.light
    k = light.groups
    e = [(1 - qq) / (1 + qq) for qq in q]
    x0 = np.array([center[0], center[1]] + [v for g in range(k) for v in (e[g] * math.cos(2 * phi[g]),
                                                                          e[g] * math.sin(2 * phi[g]))])

    def unpack(p):
        shapes = [_q_phi(p[2 + 2 * g], p[3 + 2 * g]) for g in range(k)]
        qs = tuple(light.q if light.q is not None else s[0] for s in shapes)
        phis = tuple(light.phi if light.phi is not None else s[1] for s in shapes)
        return (float(p[0]), float(p[1])), qs, phis

    def f(p):
        if max(math.hypot(p[2 + 2 * g], p[3 + 2 * g]) for g in range(k)) > 0.8:
            return math.inf
        c, qq, pp = unpack(p)
        return _light_solve(prob, light.basis(prob.grid, c, prob.psf, qq, pp), rows)[1]

    pix = prob.grid.delta
    steps = np.array([pix, pix] + [0.05] * (2 * k))
    res = scipy.optimize.minimize(f, x0, method="Nelder-Mead",
                                  options={"initial_simplex": np.vstack([x0, x0 + np.diag(steps)]),
                                           "maxfev": 150 * x0.size, "xatol": 1e-4, "fatol": 0.1,
                                           "adaptive": x0.size > 4})
    return unpack(res.x)


def _arcs(prob: _Problem, resid: np.ndarray, noise_sm: np.ndarray, smooth: float, significance: float,
          center: Optional[tuple[float, float]], exclude: float,
          floor: Optional[np.ndarray] = None) -> tuple[np.ndarray, tuple[float, float], float, np.ndarray, list]:
    """Significant residual pixels, the centre (their flux centroid where none is given), the
    flux-weighted median radius about it, the smoothed flux on the significant pixels, and the
    lensed images (:func:`_images`, before stray pixels far from the centroid are dropped: a
    double's faint image can lie three ring radii from its flux centroid).

    Without ``floor`` a pixel is significant where the smoothed residual exceeds ``significance``
    times the smoothed white noise. With ``floor`` (the residual of a lens-light model, whose
    slight misfit is smooth and, smoothed, many sigma: measured 0.2-0.3 sigma of mean offset
    over the whole SL2S cut-out, 5 sigma smoothed) the smoothed residual in noise units is
    compared with its own median and robust spread (the arcs cover a minority of the pixels), and
    must also exceed ``floor``."""
    grid, n = prob.grid, prob.grid.n
    use2 = prob.use.reshape(n, n)
    sm = ndimage.gaussian_filter(np.where(use2, resid, 0.0), smooth, mode="constant")
    if floor is None:
        significant = (sm > significance * noise_sm) & use2
    else:
        z = np.where(use2, sm / np.where(use2, noise_sm, 1.0), 0.0)
        med = float(np.median(z[use2]))
        spread = max(1.0, 1.4826 * float(np.median(np.abs(z[use2] - med))))
        significant = (z > med + significance * spread) & (sm > floor) & use2
    x, y = grid.coordinates()
    if center is not None and exclude > 0:
        significant &= np.hypot(x - center[0], y - center[1]) > exclude
    if significant.sum() < 5:
        raise ValueError("the image shows no significant lensed light (arcs) to fit a lens to: "
                         f"fewer than 5 pixels above {significance} sigma of the smoothed residual")
    flux = np.where(significant, sm, 0.0)
    images = _images(grid, significant, flux)
    if center is None:
        tot = flux.sum()
        center = (float((flux * x).sum() / tot), float((flux * y).sum() / tot))
    radius = _ring_radius(grid, significant, flux, center)
    # stray significant pixels far outside or well inside the ring (neighbours, lens-light misfit)
    # are taken for no arcs: they would widen the source grid traced from them
    r_all = np.hypot(x - center[0], y - center[1])
    significant &= (r_all < 2.0 * radius) & (r_all > 0.5 * radius)
    return significant, center, radius, flux, images


def _ring_radius(grid: ImageGrid, significant: np.ndarray, flux: np.ndarray, center: tuple[float, float]) -> float:
    """The flux-weighted median radius (arcsec) of the significant pixels about ``center``."""
    x, y = grid.coordinates()
    r = np.hypot(x - center[0], y - center[1])[significant]
    wts = flux[significant]
    order = np.argsort(r)
    cum = np.cumsum(wts[order])
    return max(float(r[order][np.searchsorted(cum, 0.5 * cum[-1])]), 2.0 * grid.delta)


def _circle_center(grid: ImageGrid, significant: np.ndarray) -> Optional[tuple[float, float]]:
    """Centre of the circle through the significant pixels (algebraic least squares, every pixel
    weighted alike), or None where it is undetermined or off the image. Unlike the flux centroid
    it is not pulled towards the brighter arc of an asymmetric configuration."""
    x, y = (a[significant] for a in grid.coordinates())
    A = np.column_stack([2.0 * x, 2.0 * y, np.ones_like(x)])
    coef, _, rank, _ = np.linalg.lstsq(A, x**2 + y**2, rcond=None)
    if rank < 3 or not np.all(np.isfinite(coef)) or max(abs(coef[0]), abs(coef[1])) > grid.fov / 2:
        return None
    return float(coef[0]), float(coef[1])


def _geometry(prob: _Problem, significance: float) -> _Geometry:
    """Stage 0 (module docstring): centre, ring radius, the arcs' pixels and the light's shape."""
    grid, use = prob.grid, prob.use
    n, pix = grid.n, grid.delta
    img = np.where(use, prob.image, 0.0).reshape(n, n)
    sig = np.where(use, prob.sigma, 0.0).reshape(n, n)
    fwhm = _psf_fwhm(prob.psf, pix)
    smooth = max(1.0, 0.5 * fwhm / pix)
    delta = np.zeros((int(8 * smooth) | 1,) * 2)
    delta[delta.shape[0] // 2, delta.shape[1] // 2] = 1.0
    noise_sm = sig * math.sqrt(float(np.sum(ndimage.gaussian_filter(delta, smooth, mode="constant") ** 2)))
    light_q, light_phi = (1.0,), (0.0,)
    light_columns = None
    if prob.light is None:
        significant, center, radius, flux, images = _arcs(prob, img, noise_sm, smooth, significance, None, 0.0)
    else:
        x, y = grid.coordinates()
        sm = ndimage.gaussian_filter(img, smooth, mode="constant")
        central = np.hypot(x, y) < 0.35 * grid.fov
        peak = np.unravel_index(np.argmax(np.where(central, sm, -np.inf)), sm.shape)
        q_m, phi_m, (xc, yc) = _light_shape(sm, peak)
        center = ((xc - (n - 1) / 2) * pix, (yc - (n - 1) / 2) * pix)
        light_q, light_phi = prob.light.shapes(prob.light.q if prob.light.q is not None else q_m,
                                               prob.light.phi if prob.light.phi is not None else phi_m)
        exclude = 2.0 * fwhm
        grow = max(1, int(math.ceil(fwhm / pix)))
        rows = use
        for _ in range(2):
            # the light alone (non-negative amplitudes), on every pixel first, then without the
            # lensed light found in its residual (every significant excess beyond the core, widened
            # by a PSF FWHM: neighbours too). Once only: the light fitted without the excess is
            # lower, and masking its excess again runs away (measured: a disc of 'arcs' 4" wide)
            if rows.sum() >= 4 * prob.light.n_components:
                center, light_q, light_phi = _light_shape_fit(prob, center, light_q, light_phi, rows)
            B = prob.light.basis(grid, center, prob.psf, light_q, light_phi)
            a, _ = _light_solve(prob, B, rows)
            galaxy = (B[:, :prob.light.n_components] @ a[:prob.light.n_components]).reshape(n, n)
            resid = img - (B @ a).reshape(n, n)
            # lensed light stands out against the galaxy's: a bright galaxy's slight misfit (a few
            # per cent of it, yet many sigma smoothed) is no arc
            floor = ARC_CONTRAST * ndimage.gaussian_filter(galaxy, smooth, mode="constant")
            significant, center, radius, flux, images = _arcs(prob, resid, noise_sm, smooth, significance, center,
                                                              exclude, floor)
            r_img = np.hypot(x - center[0], y - center[1])
            excess = (ndimage.gaussian_filter(np.where(use.reshape(n, n), resid, 0.0), smooth, mode="constant")
                      > np.maximum(significance * noise_sm, floor)) & (r_img > exclude)
            rows = use & ~ndimage.binary_dilation(excess, iterations=grow).reshape(-1)
        light_columns = a != 0  # the Gaussians NNLS kept, and the sky
        log.info("lens light alone: amplitudes %s", np.array2string(a, precision=4))
    log.info("geometry: centre (%.3f, %.3f) arcsec, ring radius %.3f arcsec, %d significant pixels%s",
             center[0], center[1], radius, int(significant.sum()),
             "" if prob.light is None else
             f", light q {np.round(light_q, 3).tolist()}, phi {np.round(light_phi, 3).tolist()} (per group)")
    return _Geometry(center=center, radius=radius, significant=significant, flux=np.where(significant, flux, 0.0),
                     light_q=tuple(light_q), light_phi=tuple(light_phi), from_light=prob.light is not None,
                     light_columns=light_columns, images=images)


# --------------------------------------------------------------------------------------------------
# optimisation


def _maximise(prob: _Problem, stage: _Stage, x0: np.ndarray, steps: np.ndarray, bounds, maxfev: int,
              xatol: float = 0.02, fatol: float = 0.1) -> tuple[np.ndarray, float]:
    """Nelder-Mead on ``-log evidence`` in units of ``steps`` (bounded), from ``x0``; ``xatol`` in
    those units, ``fatol`` in nats (both must hold to stop)."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    def f(u: np.ndarray) -> float:
        x = x0 + u * steps
        if np.any(x < lo) or np.any(x > hi):
            return math.inf
        v = prob.log_evidence(x, stage)
        return -v if math.isfinite(v) else math.inf

    dim = x0.size
    simplex = np.vstack([np.zeros(dim), np.eye(dim)])
    res = scipy.optimize.minimize(f, np.zeros(dim), method="Nelder-Mead",
                                  options={"initial_simplex": simplex, "maxfev": maxfev, "xatol": xatol,
                                           "fatol": fatol, "adaptive": dim > 4})
    return x0 + res.x * steps, -float(res.fun)


def _stage_lam(prob: _Problem, stage: _Stage, x: np.ndarray, mode: str) -> _Stage:
    """The stage with ``lam`` fixed at its evidence optimum for the lens ``x`` (``mode="fixed"``),
    or free (``"optimise"``)."""
    if mode != "fixed":
        return replace(stage, lam=None)
    res, _, _ = prob.invert(prob.stage_lens(stage, x), stage.source_grid, stage.supersample)
    return replace(stage, lam=res.lam)


def _best_of(prob: _Problem, stage: _Stage, candidates: list[np.ndarray]) -> tuple[np.ndarray, float]:
    values = [prob.log_evidence(c, stage) for c in candidates]
    k = int(np.argmax(values))
    return candidates[k], values[k]


def _images(grid: ImageGrid, significant: np.ndarray, flux: np.ndarray) -> list[tuple[float, float, float]]:
    """The lensed images: 8-connected groups of significant pixels, each as its flux-weighted
    centroid (arcsec) and flux, brightest first; groups under ``MIN_IMAGE_FLUX`` of the
    brightest's flux (noise specks) are left out."""
    labels, k = ndimage.label(significant, structure=np.ones((3, 3)))
    if k == 0:
        return []
    x, y = grid.coordinates()
    idx = np.arange(1, k + 1)
    f = np.asarray(ndimage.sum(flux, labels, idx))
    fx = np.asarray(ndimage.sum(flux * x, labels, idx))
    fy = np.asarray(ndimage.sum(flux * y, labels, idx))
    keep = f >= MIN_IMAGE_FLUX * f.max()
    out = [(float(fx[i] / f[i]), float(fy[i] / f[i]), float(f[i])) for i in np.flatnonzero(keep)]
    return sorted(out, key=lambda t: -t[2])


def _candidates(prob: _Problem, geo: _Geometry) -> list[tuple[tuple[float, float], float]]:
    """Lens centres and ring radii (arcsec) the coarse scan tries.

    With lens light: the light's centre. Else the arcs' flux centroid, the centre of the circle
    through them and the image's centre (where cut-outs put the lens), each with the
    flux-weighted median radius about it; and, where the arcs fall into two or more images, the
    images' mean position with their mean distance from it (a quad's or a ring's centre), and for
    two images the point between them that an isothermal lens implies (image distances from the
    centre in the ratio of their fluxes, ``theta_E`` half their separation): the flux centroid
    of a double sits near its bright image, far from the lens. A candidate within two pixels
    and 10% in radius of an earlier one is dropped."""
    grid = prob.grid
    if geo.from_light:
        return [(geo.center, _ring_radius(grid, geo.significant, geo.flux, geo.center))]
    out: list[tuple[tuple[float, float], float]] = []

    def add(c: Optional[tuple[float, float]], R: Optional[float] = None) -> None:
        if c is None:
            return
        R = _ring_radius(grid, geo.significant, geo.flux, c) if R is None else max(float(R), 2.0 * grid.delta)
        if all(math.hypot(c[0] - o[0], c[1] - o[1]) > 2 * grid.delta or abs(R / r - 1) > 0.1 for o, r in out):
            out.append(((float(c[0]), float(c[1])), R))

    for c in (geo.center, _circle_center(grid, geo.significant), (0.0, 0.0)):
        add(c)
    images = geo.images
    if len(images) >= 2:
        p = np.array([(a, b) for a, b, _ in images])
        m = p.mean(axis=0)
        add((m[0], m[1]), float(np.mean(np.hypot(*(p - m).T))))
    if len(images) == 2:
        (x1, y1, f1), (x2, y2, f2) = images
        t = f1 / (f1 + f2)
        add((x1 + t * (x2 - x1), y1 + t * (y2 - y1)), 0.5 * math.hypot(x2 - x1, y2 - y1))
    return out


def _coarse(coarse: _Problem, candidates: list[tuple[tuple[float, float], float]], geo: _Geometry,
            cfg: FitConfig, shear: bool) -> tuple[np.ndarray, float, _Stage]:
    """Stage 1 on the ``coarse`` (binned) problem: a scan over the ``candidates`` (centre, ring
    radius), ``theta_E`` and the ellipticity (``SCAN_E``), then short Nelder-Mead runs from the
    best points of ``COARSE_STARTS`` basins (:func:`_distinct_starts`) and from the best
    ``POINT_STARTS`` point-image lenses (:func:`_point_starts`) not already among them, and
    longer ones from the best two of those. The source grid sits on each lens's centre
    (``_Problem.lens``), one size for every candidate (their evidences are compared): the
    largest ring radius times ``source_fov_factor``."""
    space = _Space(shear=shear, epl=False)
    centers = [c for c, _ in candidates]
    radii = [R for _, R in candidates]
    fov = cfg.source_fov_factor * max(radii)
    log.info("coarse candidates (centre, ring radius; arcsec): %s",
             ", ".join(f"({c[0]:.3f}, {c[1]:.3f}) {R:.3f}" for c, R in candidates))
    stage = _Stage("coarse", space, SourceGrid(n=cfg.coarse_source_n, fov=fov), cfg.coarse_supersample,
                   centred=True)
    # a grid over theta_E and the ellipticity (no shear yet): the evidence's basin is narrow in
    # theta_E (about 5%) and a round lens's scan can prefer the demagnified solutions, so the
    # shape is scanned with it. theta_E from 0.8 to 1.2 ring radii; with lens light from 0.7 to
    # 1.5 (the arcs left by a light model can sit well inside the Einstein radius: SLACS
    # 1430+4105's flux-weighted median radius is 1.02", its theta_E 1.52"). Not without lens
    # light: there the wider scan sent validation lens 0 (fitted within 0.01% at 0.8-1.2) to
    # theta_E 2.95" against 1.95", the centre 0.7" off
    factors = np.geomspace(0.7, 1.5, 13) if geo.from_light else np.linspace(0.8, 1.2, 9)
    cands = []
    for c, R in zip(centers, radii):
        for f in factors:
            for e in SCAN_E:
                for ang in (np.arange(6) * math.pi / 6 if e > 0 else (0.0,)):
                    x = np.zeros(len(space.names))
                    x[0], x[1], x[2], x[3], x[4] = f * R, e * math.cos(2 * ang), e * math.sin(2 * ang), c[0], c[1]
                    cands.append(x)
    values = np.array([coarse.log_evidence(c, stage) for c in cands])
    starts = _distinct_starts(cands, values, space, COARSE_STARTS)
    # lenses the scan's grid misses (a strong shear across the mass's ellipticity, q < 0.35) are
    # found from the images' positions, where the arcs fall into two or more
    pixel = coarse.grid.fov / geo.significant.shape[0]  # the original image's pixel (the images' grid)
    points = _point_starts(space, geo.images, candidates, coarse.grid.fov, pixel)
    if points:
        pv = np.array([coarse.log_evidence(c, stage) for c in points])
        extra = [x for x in _distinct_starts(points, pv, space, POINT_STARTS) if _apart(space, x, starts, 2.5)]
        log.info("coarse starts from the images' positions: %s", "; ".join(
            f"{space.report(x)['theta_E']:.3f}\" q {space.report(x)['q']:.3f}" for x in extra) or "none new")
        starts = starts + extra
    # successive halving: a short Nelder-Mead from each start (half the budget), ranked at the
    # optimised lam, then the best two go on with the other half
    bounds = space.bounds(coarse.grid.fov)
    short_fev = max(cfg.coarse_evaluations // (2 * len(starts)), 2 * len(space.names) + 2)
    ranked = []
    for x0 in starts:
        st = _stage_lam(coarse, stage, x0, cfg.lam_mode)
        x, _ = _maximise(coarse, st, x0, space.steps(x0[0]), bounds, short_fev, xatol=0.05, fatol=0.3)
        ranked.append((coarse.log_evidence(x, stage), x))
    ranked.sort(key=lambda t: -t[0])
    best = (None, -math.inf)
    for _, x0 in ranked[:2]:
        st = _stage_lam(coarse, stage, x0, cfg.lam_mode)
        x, v = _maximise(coarse, st, x0, space.steps(x0[0]), bounds, cfg.coarse_evaluations // 4,
                         xatol=0.05, fatol=0.3)
        if v > best[1]:
            best, stage = (x, v), st
    x, v = best
    log.info("coarse stage (%d centre candidates, %s pixels of %.3f arcsec): %s, log evidence %.2f", len(centers),
             coarse.grid.n, coarse.grid.delta, space.report(x), v)
    return x, v, stage


def _image_residuals(space: _Space, x: np.ndarray, points: np.ndarray, sigma: float) -> np.ndarray:
    """The lensed images' misfit for the lens ``x`` (point images, in units of ``sigma``, arcsec):
    each image's offset in the image plane, linearised, from where the lens puts the images of the
    best common source, ``A_i^-1 (beta_i - beta)`` with ``A_i`` the lens equation's Jacobian
    (magnification capped at ``POINT_MAGNIFICATION_CAP``) and ``beta`` their weighted mean (the
    least-squares source). (2 n,) for the ``points`` (n, 2)."""
    n = len(points)
    h = 1e-4 * max(float(x[0]), 0.01)
    px, py = points[:, 0], points[:, 1]
    bx, by = space.lens(x).raytrace(np.concatenate([px, px + h, px - h, px, px]),
                                    np.concatenate([py, py, py, py + h, py - h]))
    beta = np.column_stack([bx[:n], by[:n]])
    A = np.empty((n, 2, 2))
    A[:, 0, 0], A[:, 1, 0] = (bx[n:2 * n] - bx[2 * n:3 * n]) / (2 * h), (by[n:2 * n] - by[2 * n:3 * n]) / (2 * h)
    A[:, 0, 1], A[:, 1, 1] = (bx[3 * n:4 * n] - bx[4 * n:]) / (2 * h), (by[3 * n:4 * n] - by[4 * n:]) / (2 * h)
    U, s, Vt = np.linalg.svd(A)
    s_inv = 1.0 / np.maximum(s, 1.0 / POINT_MAGNIFICATION_CAP)
    M = np.einsum("nji,nj,nkj->nik", Vt, s_inv, U)  # A^-1 = V S^-1 U^T, capped
    W = np.einsum("nji,njk->nik", M, M)
    source = np.linalg.solve(W.sum(axis=0), np.einsum("nij,nj->i", W, beta))
    return (np.einsum("nij,nj->ni", M, beta - source) / sigma).ravel()


def _point_starts(space: _Space, images: list, candidates: list[tuple[tuple[float, float], float]], fov: float,
                  pixel: float) -> list[np.ndarray]:
    """Lenses (parameter vectors of ``space``) that put the lensed ``images`` (``_images``: x, y,
    flux) at their observed positions as images of one point source, or [] for fewer than two.

    Least squares (:func:`scipy.optimize.least_squares`) of :func:`_image_residuals`
    (positional error ``POINT_SIGMA_PIXELS`` pixels) with weak Gaussian priors on the ellipticity
    and shear components and on the centre (``POINT_PRIOR_*``), from each centre candidate with
    its ring radius as ``theta_E``, round or ``|e|`` 0.3 in four orientations, without shear or
    0.15 in four. The positions fix the lens far more smoothly than the pixelated evidence on a
    coarse grid does, whose basin about a strongly sheared or very flattened lens the coarse
    scan's grid misses. Solutions whose positional chi^2 exceeds ``POINT_CHI2_PER_IMAGE`` per
    image (the images are no one source's, e.g. a neighbour taken for one) are dropped; the rest
    are returned best first (total cost), near-duplicates (within 0.5 scan steps) once."""
    if len(images) < 2:
        return []
    points = np.array([(a, b) for a, b, _ in images], dtype=np.float64)
    sigma = POINT_SIGMA_PIXELS * pixel
    bounds = space.bounds(fov)
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    shear = space.shear
    # (|e|, twice its angle, gamma, twice its angle): round or 0.3 in four orientations, each
    # without shear or 0.15 in four
    starts = [(e, math.pi * i / ne, g, math.pi * k / ng)
              for e, ne in ((0.0, 1), (0.3, 4)) for g, ng in (((0.0, 1), (0.15, 4)) if shear else ((0.0, 1),))
              for i in range(ne) for k in range(ng)]
    sols: list[tuple[float, np.ndarray]] = []
    for c, R in candidates:
        def residuals(x: np.ndarray) -> np.ndarray:
            prior = [x[1] / POINT_PRIOR_E, x[2] / POINT_PRIOR_E, (x[3] - c[0]) / (POINT_PRIOR_CENTRE * R),
                     (x[4] - c[1]) / (POINT_PRIOR_CENTRE * R)]
            if shear:
                prior += [x[5] / POINT_PRIOR_SHEAR, x[6] / POINT_PRIOR_SHEAR]
            return np.concatenate([_image_residuals(space, x, points, sigma), prior])

        for e, a, g, b in starts:
            x0 = np.zeros(len(space.names))
            x0[:5] = R, e * math.cos(a), e * math.sin(a), c[0], c[1]
            if shear:
                x0[5:7] = g * math.cos(b), g * math.sin(b)
            x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
            try:
                res = scipy.optimize.least_squares(residuals, x0, bounds=(lo, hi), max_nfev=100 * x0.size)
            except (ValueError, np.linalg.LinAlgError) as exc:  # a degenerate Jacobian
                log.debug("point-image fit from %s failed: %s", x0, exc)
                continue
            chi2 = float(np.sum(res.fun[:2 * len(points)] ** 2))
            if res.success and chi2 <= POINT_CHI2_PER_IMAGE * len(points):
                sols.append((float(2 * res.cost), res.x))
    out: list[np.ndarray] = []
    for _, x in sorted(sols, key=lambda t: t[0]):
        if _apart(space, x, out, 0.5):
            out.append(x)
    log.debug("point-image fits: %d of the starts converged, %d distinct", len(sols), len(out))
    return out


def _apart(space: _Space, x: np.ndarray, kept: list[np.ndarray], steps: float) -> bool:
    """Whether ``x`` lies more than ``steps`` scan steps (``_Space.steps`` at the other's
    ``theta_E``) in some parameter from every vector in ``kept``."""
    return all(np.max(np.abs(x - o) / np.maximum(space.steps(o[0]), 1e-9)) > steps for o in kept)


def _distinct_starts(cands: list[np.ndarray], values: np.ndarray, space: _Space, k: int) -> list[np.ndarray]:
    """The ``k`` best scan points that lie in different basins: each more than 2.5 scan steps
    (``_Space.steps`` at its ``theta_E``) in some parameter from every better one kept."""
    out: list[np.ndarray] = []
    for j in np.argsort(-values):
        if not math.isfinite(values[j]):
            break
        if _apart(space, cands[j], out, 2.5):
            out.append(cands[j])
            if len(out) == k:
                break
    return out or [cands[int(np.argmax(values))]]


@dataclass(frozen=True)
class _Placement:
    """A refinement's source grid and where its centre sits in the source plane (arcsec)."""

    grid: SourceGrid
    center: tuple = (0.0, 0.0)


def _weighted_quantiles(v: np.ndarray, w: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """Quantiles ``q`` of the values ``v`` under the non-negative weights ``w``."""
    order = np.argsort(v)
    c = np.cumsum(w[order])
    return np.interp(np.asarray(q) * c[-1], c, v[order])


def _full_grid(prob: _Problem, x: np.ndarray, space: _Space, geo: _Geometry, cfg: FitConfig,
               margin: Optional[float] = None) -> _Placement:
    """The refinement's source grid, placed on the source: the significant pixels traced through
    the lens ``x``, the box between the 2nd and 98th percentiles of their flux along each axis
    (stray pixels, e.g. lens-light residuals traced far out near the lens centre, neither widen
    nor move it), its larger side times ``margin`` (default ``source_margin``; at least four
    image pixels), centred on the box.

    A grid centred on the source rather than the origin resolves it with the same pixel count: on
    SLACS 2303+1422 the origin-centred grid spanned 2.50" for a source of about 0.4 x 0.7"; on
    simulated lenses the true lens's evidence rose by 3,700 nats (lens 18) and the truth was
    preferred to the lens the origin-centred grid had led to (``docs/real_observations.md``)."""
    gx, gy = prob.grid.coordinates()
    s = geo.significant
    bx, by = space.lens(x).raytrace(gx[s], gy[s])
    w = np.clip(np.asarray(geo.flux)[s], 0.0, None)
    if not np.any(w > 0):
        w = np.ones_like(w)
    lo_x, hi_x = _weighted_quantiles(bx, w, (0.02, 0.98))
    lo_y, hi_y = _weighted_quantiles(by, w, (0.02, 0.98))
    half = 0.5 * max(hi_x - lo_x, hi_y - lo_y)
    margin = cfg.source_margin if margin is None else margin
    grid = SourceGrid(n=cfg.source_n, fov=max(2.0 * half * margin, 4 * prob.grid.delta))
    return _Placement(grid, (0.5 * float(lo_x + hi_x), 0.5 * float(lo_y + hi_y)))


def _chosen_grid(prob: _Problem, stage: _Stage, x: np.ndarray, geo: _Geometry, cfg: FitConfig,
                 evaluate: Optional[_Problem] = None) -> _Placement:
    """:func:`_full_grid` (on ``prob``, the original pixels the geometry stage found the arcs
    in) with the margin of highest evidence at the lens ``x`` (``lam`` optimised; on the problem
    ``evaluate``, default ``prob``) among ``source_margin`` times ``SOURCE_MARGIN_FACTORS``: how far the source
    extends beyond the box of its significant flux is for the data to say (SLACS 1430+4105
    without shear: log evidence 60,206, 61,409, 61,538 and 61,175 for margins 1.25, 1.6, 2.0 and
    2.5, the arcs' residuals falling from mean z^2 24.9 to 16.8 at 2.0). Within the fit the
    chosen grid is then fixed."""
    best, best_v = None, -math.inf
    for f in SOURCE_MARGIN_FACTORS:
        placed = _full_grid(prob, x, stage.space, geo, cfg, cfg.source_margin * f)
        v = (prob if evaluate is None else evaluate).log_evidence(
            x, replace(_placed_stage(stage, placed, x, follow=False), name="grid choice", lam=None))
        if best is None or v > best_v:
            best, best_v = placed, v
    log.info("source grid: %.3f arcsec centred at (%.3f, %.3f) (log evidence %.2f)", best.grid.fov,
             best.center[0], best.center[1], best_v)
    return best


def _placed_stage(stage: _Stage, placed: _Placement, x: np.ndarray, follow: bool) -> _Stage:
    """``stage`` on the grid ``placed`` about the lens ``x``: fixed in the source plane, or with
    ``follow`` (``FitConfig.follow_grid``) carried with the lens centre's ray (placed where
    ``placed`` says for ``x``; for another lens moved by as much as its centre's ray moved)."""
    if not follow:
        return replace(stage, source_grid=placed.grid, grid_offset=placed.center, centred=False)
    rx, ry = _centre_ray(stage.space.lens(x))
    return replace(stage, source_grid=placed.grid, grid_offset=(placed.center[0] - rx, placed.center[1] - ry),
                   centred=True)


def _grid_center(stage: _Stage, x: np.ndarray) -> tuple[float, float]:
    """Where ``stage``'s source grid is centred for the lens ``x`` (arcsec, the fit's frame)."""
    if not stage.centred:
        return stage.grid_offset
    rx, ry = _centre_ray(stage.space.lens(x))
    return rx + stage.grid_offset[0], ry + stage.grid_offset[1]


def _axis_steps(prob: _Problem, stage: _Stage, x: np.ndarray, f0: float, h0: np.ndarray,
                lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, list]:
    """Per parameter, a step at which the log evidence drops by about one nat either side of ``x``
    (adapted from ``h0``). Returns the steps and the evaluations made ``[(dx, value), ...]``."""
    dim = x.size
    h = h0.copy()
    points = []
    for i in range(dim):
        for _ in range(4):
            h[i] = max(min(h[i], 0.999 * (hi[i] - x[i]), 0.999 * (x[i] - lo[i])), 1e-6)
            e = np.zeros(dim)
            e[i] = h[i]
            fp, fm = prob.log_evidence(x + e, stage), prob.log_evidence(x - e, stage)
            points += [(e, fp), (-e, fm)]
            drop = f0 - 0.5 * (fp + fm)
            if not math.isfinite(drop):  # beyond where the evidence is defined
                h[i] *= 0.3
                continue
            if drop <= 0:  # below the evidence's jitter, or a flat direction: a longer step
                h[i] *= 3.0
                continue
            if 0.5 < drop < 3.0:  # well above the evidence's jitter (a few tenths of a nat)
                break
            h[i] *= min(max(math.sqrt(1.0 / drop), 0.2), 5.0)
    return h, points


def _quadratic_design(u: np.ndarray) -> np.ndarray:
    """Columns ``1, u_i, u_i u_j (i <= j)`` of a quadratic in ``u`` (rows are points)."""
    dim = u.shape[1]
    iu, ju = np.triu_indices(dim)
    return np.hstack([np.ones((u.shape[0], 1)), u, u[:, iu] * u[:, ju]])


@dataclass(frozen=True)
class _Quadratic:
    """A least-squares quadratic of the log evidence about ``x``: ``f(x + dx) ~ f0 + g.dx +
    dx.H.dx / 2``, fitted where it drops by a few nats; ``h`` are the axis steps (about one nat)."""

    x: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    h: np.ndarray
    samples: tuple = ()  # the evaluations it was fitted to, ((x, value), ...)

    def newton_step(self, radius: float) -> tuple[np.ndarray, bool]:
        """The step to the quadratic's maximum, in parameter units (the Hessian's eigenvalues raised
        as in :func:`_covariance`, so a flat or upward direction takes a step of its gradient over
        that floor), and whether it is trusted: within ``radius`` axis steps (else it is shortened
        to that radius). A nearly flat direction (SLACS 2303+1422) thus takes a bounded step
        rather than a refit after refit; the covariance flags it (``hessian_ok``)."""
        h = self.h
        b = self.gradient * h
        if not (np.all(np.isfinite(self.hessian)) and np.all(np.isfinite(b))):
            return np.zeros_like(h), False
        e, U = _step_eigen(self.hessian, h)
        u = U @ ((U.T @ b) / np.maximum(e, 0.1))
        norm = float(np.linalg.norm(u))
        if norm > radius:
            return u * (radius / norm) * h, False
        return u * h, True


def _curvature(prob: _Problem, stage: _Stage, x: np.ndarray, f0: float, h0: np.ndarray,
               bounds, seed: int = 0, rounds: int = 3, earlier: Optional[list] = None) -> _Quadratic:
    """The Hessian (and gradient) of the log evidence at ``x`` from a least-squares quadratic
    through evaluations spread over the region where it drops by a few nats.

    The evidence of a pixelated source is not smooth on small scales (pixels enter and leave the
    mask of traced rays), so central differences at one step are at the mercy of that noise; a
    quadratic fitted to ``2 x`` as many scattered points as it has coefficients (plus the axis
    steps found by :func:`_axis_steps`) averages it out. Where the fit is not negative definite
    (a nearly flat direction, e.g. shear against ellipticity) another as many points are added, up
    to ``rounds`` times. ``x`` need not be the optimum: the quadratic's maximum is then a Newton
    step away (:meth:`_Quadratic.newton_step`). ``earlier``: evaluations ``[(x, value), ...]``
    of the same stage (a previous quadratic's ``samples``): its axis steps ``h0`` are kept and
    the points within ``1.5 sqrt(dim)`` of them from ``x`` count, so fewer new ones are needed."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    dim = x.size
    n_coef = 1 + dim + dim * (dim + 1) // 2
    new = 2 * n_coef
    if earlier is None:
        h, points = _axis_steps(prob, stage, x, f0, h0, lo, hi)
        points = [(x + dx, f) for dx, f in points]
    else:
        h = h0.copy()
        # the centre enters once, below, however often the earlier evaluations hold it
        points = [(xa, f) for xa, f in earlier
                  if 0 < np.linalg.norm((xa - x) / h) <= 1.5 * math.sqrt(dim)]
        new = max(new - len(points), n_coef)
    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(dim)
    for _ in range(rounds):
        z = rng.normal(size=(new, dim))
        z *= rng.uniform(0.3, 1.5, size=(len(z), 1)) * math.sqrt(dim) / 1.5 / np.linalg.norm(z, axis=1, keepdims=True)
        for zk in z:
            xa = np.clip(x + zk * h, lo, hi)
            points.append((xa, prob.log_evidence(xa, stage)))
        dx = np.array([xa - x for xa, _ in points] + [np.zeros(dim)])
        f = np.array([v for _, v in points] + [f0])
        keep = np.isfinite(f) & (f > f0 - 50.0)
        coef, *_ = np.linalg.lstsq(_quadratic_design(dx[keep] / h), f[keep], rcond=None)
        A = np.zeros((dim, dim))
        A[iu, ju] = coef[1 + dim:]
        A = A + A.T  # d2f/du_i du_j: 2 c_ii on the diagonal, c_ij off it
        if _negative_definite(A):
            break
        new = 2 * n_coef
    return _Quadratic(x=np.array(x, dtype=np.float64), hessian=A / np.outer(h, h), gradient=coef[1:1 + dim] / h, h=h,
                      samples=tuple(points) + ((np.array(x, dtype=np.float64), f0),))


def _negative_definite(H: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(H)) and np.linalg.eigvalsh(-0.5 * (H + H.T)).min() > 0)


def _step_eigen(H: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of ``-H`` (symmetrised) in units of the axis steps ``h``, where one
    nat is a curvature of about 2: what :func:`_covariance` and the Newton step clip alike."""
    return np.linalg.eigh(-0.5 * (H + H.T) * np.outer(h, h))


def _climb(prob: _Problem, stage: _Stage, quad: _Quadratic, f0: float, bounds,
           maxfev: int) -> tuple[np.ndarray, float]:
    """From ``quad.x``, an optimum whose fitted curvature is not negative definite (so no maximum:
    the optimiser stalled, e.g. in the narrow curved ridge of a very flattened lens), a higher
    point if one is found: the best of the quadratic's samples, then line searches both ways along
    each direction in which the quadratic rises (doubling steps of the axis steps ``quad.h`` while
    the log evidence grows), then Nelder-Mead from the best point in units of those steps.
    ``stage``'s ``lam`` is used throughout (the caller compares at its own)."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    x, v = quad.x, f0
    if quad.samples:  # evaluated at the quadratic's own lam (its centre among them)
        xa, f = max(quad.samples, key=lambda t: t[1])
        if np.any(xa != quad.x):
            fa = prob.log_evidence(np.asarray(xa, dtype=np.float64), stage)
            if fa > v:
                x, v = np.array(xa, dtype=np.float64), fa
    e, U = _step_eigen(quad.hessian, quad.h)
    for k in np.flatnonzero(e <= 0):
        for sign in (1.0, -1.0):
            for t in (1.0, 2.0, 4.0, 8.0):
                xa = np.clip(x + sign * t * U[:, k] * quad.h, lo, hi)
                f = prob.log_evidence(xa, stage)
                if not f > v:
                    break
                x, v = xa, f
    return _maximise(prob, stage, x, quad.h, bounds, maxfev)


@dataclass(frozen=True)
class _Refined:
    x: np.ndarray
    log_evidence: float
    quadratic: _Quadratic  # the last one fitted: its Hessian is the curvature at ``x`` where converged
    converged: bool  # the last step was trusted (or no step improved the evidence)


def _newton_refine(prob: _Problem, stage: _Stage, x: np.ndarray, f0: float, h0: np.ndarray, bounds,
                   iterations: Optional[int] = None) -> _Refined:
    """The full-resolution refinement after the medium stage: a quadratic fitted about ``x``
    (:func:`_curvature`, as for the uncertainties) and a step to its maximum, accepted where the
    evidence there is higher. Where the step is not trusted (the maximum beyond ``NEWTON_RADIUS *
    sqrt(dim)`` axis steps, outside the ball the quadratic was sampled in) it is shortened to that
    radius, continued along its direction while the evidence rises (doubled up to
    ``NEWTON_LINE_DOUBLINGS`` times), and, where it gained at least ``NEWTON_GAIN``, the quadratic
    fitted again about the new point, at most ``iterations`` times; still not trusted, the result
    says it has not converged (:func:`fit_lens` then goes on with Nelder-Mead). ``iterations``:
    None is ``NEWTON_ITERATIONS`` (read at the call)."""
    iterations = NEWTON_ITERATIONS if iterations is None else iterations
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    quad, trusted = None, False
    extra: list = []  # evaluations along the steps, for the next quadratic
    for i in range(iterations):
        # one round: a quadratic that is not negative definite (a flat direction) still gives a
        # bounded step; the extra rounds are for the final curvature (fit_lens)
        quad = _curvature(prob, stage, x, f0, h0 if quad is None else quad.h, bounds, seed=i, rounds=1,
                          earlier=None if quad is None else list(quad.samples) + extra)
        extra = []
        step, trusted = quad.newton_step(NEWTON_RADIUS * math.sqrt(x.size))
        x_new = np.clip(x + step, lo, hi)
        f_new = prob.log_evidence(x_new, stage)
        extra.append((x_new, f_new))
        if not trusted and f_new > f0:
            # a shortened step that gained: go on along it while the evidence keeps rising (the
            # maximum lies beyond the sampled ball; measured on SLACS 2303+1422: three shortened
            # steps in one direction, 2-5 nats each)
            for _ in range(NEWTON_LINE_DOUBLINGS):
                step = 2.0 * step
                x_far = np.clip(x + step, lo, hi)
                f_far = prob.log_evidence(x_far, stage)
                extra.append((x_far, f_far))
                if not f_far > f_new:
                    break
                x_new, f_new = x_far, f_far
        log.info("Newton step %d (%s): %s axis steps, log evidence %.2f -> %.2f", i + 1,
                 "trusted" if trusted else "shortened", np.round((x_new - x) / quad.h, 2).tolist(), f0, f_new)
        if not f_new > f0:
            # the quadratic's centre is the best point seen: where its step was trusted, its Hessian
            # is the curvature there; a shortened step that lost says the quadratic does not describe
            # the evidence here, which is then no optimum (validation lens 3: five shortened steps
            # gaining 7-30 nats each, the fifth losing 7, 500 nats below the true lens): not converged
            break
        # a shortened step that gains less than NEWTON_GAIN: along a nearly flat direction the step
        # follows the quadratic's noise (SLACS 2303+1422: shortened steps gaining 10.6, then 1.7 nats)
        trusted = trusted or f_new - f0 < NEWTON_GAIN
        x, f0 = x_new, f_new
        if trusted:
            break
    return _Refined(x=x, log_evidence=f0, quadratic=quad, converged=trusted)


def _covariance(H: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(-H)^-1``. Where ``-H`` is not positive definite its eigenvalues (in units of the axis
    steps ``h``, where one nat is a curvature of about 2) are raised to 0.1, i.e. an uncertainty of at
    most about three steps along an unconstrained direction, and the result is flagged."""
    if not np.all(np.isfinite(H)):
        return np.full(H.shape, np.nan), False
    e, U = _step_eigen(H, h)
    ok = bool(e.min() > 0)
    e = np.maximum(e, 0.1) if not ok else e
    return ((U / e) @ U.T) * np.outer(h, h), ok


def _grid_variants(grid: SourceGrid, k: int) -> list[tuple[SourceGrid, tuple[float, float]]]:
    """``k`` other source grids: moved by half a pixel (x, y, diagonal) or with 4 pixels fewer or
    more a side over the same field, in turn."""
    d = grid.delta
    pool = [(grid, (0.5 * d, 0.0)), (grid, (0.0, 0.5 * d)), (SourceGrid(n=grid.n + 4, fov=grid.fov), (0.0, 0.0)),
            (grid, (0.5 * d, 0.5 * d)), (SourceGrid(n=max(grid.n - 4, 4), fov=grid.fov), (0.0, 0.0))]
    return [pool[i % len(pool)] for i in range(k)]


def _grid_systematics(prob: _Problem, stage: _Stage, x: np.ndarray, cov: np.ndarray, h: np.ndarray,
                      bounds, k: int, seed: int = 1) -> np.ndarray:
    """Covariance of the optimum over ``k`` other source grids (:func:`_grid_variants`).

    Which pixels the source is cut into is a choice the data do not make, and the optimum moves
    with it by more than the curvature's errors where the source has structure on the pixel
    scale. Per grid the log evidence near ``x`` is modelled as ``c + g.dx - dx.P.dx / 2`` with the
    precision ``P = cov^-1`` of the main grid and ``c, g`` fitted by least squares to evaluations
    scattered over the region where it drops by about a nat (``h``: the axis steps); the optimum
    moves by ``cov g``. Returns the mean of ``dx dx^T`` over the grids."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    dim = x.size
    P = np.linalg.inv(cov)
    rng = np.random.default_rng(seed)
    shifts = []
    for grid, offset in _grid_variants(stage.source_grid, k):
        st = replace(stage, source_grid=grid, name="grid systematics",
                     grid_offset=(stage.grid_offset[0] + offset[0], stage.grid_offset[1] + offset[1]))
        z = rng.normal(size=(2 * dim + 2, dim))
        z *= math.sqrt(dim) / 1.5 / np.linalg.norm(z, axis=1, keepdims=True)
        dx = np.vstack([np.zeros(dim), np.clip(z * h, lo - x, hi - x)])
        f = np.array([prob.log_evidence(x + d, st) for d in dx])
        keep = np.isfinite(f)
        if keep.sum() < dim + 2:
            log.warning("grid systematics: too few evidences on a grid of %d pixels", grid.n)
            continue
        r = f[keep] + 0.5 * np.einsum("ij,jk,ik->i", dx[keep], P, dx[keep])
        coef, *_ = np.linalg.lstsq(np.hstack([np.ones((int(keep.sum()), 1)), dx[keep]]), r, rcond=None)
        shifts.append(cov @ coef[1:])
    if not shifts:
        return np.zeros((dim, dim))
    S = np.array(shifts)
    return S.T @ S / len(S)


def _posterior(prob: _Problem, stage: _Stage, space: _Space, x: np.ndarray, cov: np.ndarray, bounds,
               config: FitConfig) -> PosteriorSamples:
    """emcee samples of the log evidence (``stage``: lam fixed) from the curvature's Gaussian about
    ``x``, returned in the reported parameters (angles unwrapped about ``x``'s)."""
    post = sample_posterior(lambda p: prob.log_evidence(p, stage), x, cov, bounds, space.names,
                            steps=config.posterior_steps, walkers=config.posterior_walkers)
    best = space.report(x)
    keys = list(best)
    values = np.empty((len(post.samples), len(keys)))
    for n, p in enumerate(post.samples):
        r = space.report(p)
        values[n] = [best[k] + _wrap_angle(r[k] - best[k]) if k in ("phi", "gamma_phi") else r[k] for k in keys]
    return replace(post, names=tuple(keys), samples=values)


def _posterior_std(post: PosteriorSamples, grid_std: Optional[dict]) -> dict[str, float]:
    """The samples' standard deviations, with the grid term's added in quadrature."""
    std = post.samples.std(axis=0, ddof=1)
    return {k: float(math.hypot(s, 0.0 if grid_std is None else grid_std[k])) for k, s in zip(post.names, std)}


def _report_std(space: _Space, x: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """Standard deviations of the reported parameters (delta method, numerical Jacobian)."""
    base = space.report(x)
    keys = list(base)
    J = np.zeros((len(keys), x.size))
    for j in range(x.size):
        h = 1e-6 * max(1.0, abs(x[j]))
        e = np.zeros(x.size)
        e[j] = h
        up, dn = space.report(x + e), space.report(x - e)
        for i, k in enumerate(keys):
            d = up[k] - dn[k]
            if k in ("phi", "gamma_phi"):
                d = _wrap_angle(d)
            J[i, j] = d / (2 * h)
    var = np.einsum("ij,jk,ik->i", J, cov, J)
    return {k: float(math.sqrt(v)) if v >= 0 else math.nan for k, v in zip(keys, var)}


@contextlib.contextmanager
def _threads(blas: Optional[int], numba_threads: Optional[int]):
    """Limit BLAS (threadpoolctl, where installed) and Numba threads for the duration."""
    import numba

    with contextlib.ExitStack() as stack:
        if blas is not None:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # pragma: no cover - optional
                log.debug("threadpoolctl is not installed: BLAS threads left alone")
            else:
                stack.enter_context(threadpool_limits(limits=blas, user_api="blas"))
        before = numba.get_num_threads()
        if numba_threads is not None:
            numba.set_num_threads(max(1, min(numba_threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            numba.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# public entry point


def _full_amplitudes(light: MGELight, columns: Optional[np.ndarray], amplitudes: np.ndarray) -> np.ndarray:
    """The amplitudes of every column of ``light``'s basis (zero where left out)."""
    if columns is None:
        return np.asarray(amplitudes, dtype=np.float64)
    out = np.zeros(light.n_columns)
    out[columns] = amplitudes
    return out


@dataclass(frozen=True)
class LightFit:
    """The lens galaxy's light fitted alone (:func:`fit_light`; the geometry stage of
    :func:`fit_lens`).

    Attributes
    ----------
    center : tuple of float
        The light's centre (arcsec, from the grid's centre).
    q, phi : tuple of float
        Axis ratio and angle (radians) per group of the basis (``MGELight.groups``).
    columns : ndarray
        ``(MGELight.n_columns,)`` bool: the basis columns the non-negative fit kept (the sky's
        always); the others stay out of a joint inversion, as in :func:`fit_lens`.
    arcs : ndarray
        ``(n, n)`` bool: the significant residual light it left (lensed arcs, neighbours).
    prior_std : float
        The amplitudes' prior standard deviation :func:`fit_lens` would use by default
        (``FitConfig.light_prior_std``: 100 times the largest absolute datum in the mask).
    """

    center: tuple
    q: tuple
    phi: tuple
    columns: np.ndarray
    arcs: np.ndarray
    prior_std: float

    def basis(self, light: "MGELight", image_grid: ImageGrid, center: tuple[float, float],
              psf: Optional[np.ndarray]) -> np.ndarray:
        """The kept columns of ``light``'s basis with these shapes about ``center`` (e.g. a given
        lens's centre, where :func:`fit_lens` centres the light in the joint inversion)."""
        return np.ascontiguousarray(light.basis(image_grid, center, psf, self.q, self.phi)[:, self.columns])


def _light_prior_std(data: np.ndarray, use: np.ndarray) -> float:
    """The light amplitudes' default prior standard deviation: 100 times the largest absolute datum
    used (1 where all are zero)."""
    return 100.0 * float(np.max(np.abs(data[use]))) or 1.0


def _prepared(image: np.ndarray, sigma: Union[float, np.ndarray], image_grid: ImageGrid, psf: Optional[np.ndarray],
              mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Validated inputs: flat data and noise (masked pixels hold finite placeholders, never used:
    their weight is zero), the ``(n, n)`` mask of pixels used (bad pixels and ``mask``) and the
    validated PSF."""
    img = np.asarray(image, dtype=np.float64)
    if img.shape != image_grid.shape:
        raise ValueError(f"image must have the grid's shape {image_grid.shape}, got {img.shape}")
    sig_raw = np.asarray(sigma, dtype=np.float64)
    if sig_raw.ndim != 0 and sig_raw.shape != img.shape:
        raise ValueError(f"sigma must be a scalar or have the image's shape {img.shape}, got {sig_raw.shape}")
    use = bad_pixel_mask(sig_raw, img)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != img.shape:
            raise ValueError(f"mask must be a boolean array of the image's shape {img.shape}, "
                             f"got {m.dtype} {m.shape}")
        use &= m
    if not use.any():
        raise ValueError("mask leaves no pixels to fit")
    n_bad = int((~bad_pixel_mask(sig_raw, img)).sum())
    if n_bad:
        log.info("%d pixels masked for non-finite or huge noise or non-finite data", n_bad)
    sig = np.broadcast_to(sig_raw, img.shape).astype(np.float64)
    img_c = np.where(use, img, 0.0).reshape(-1)
    sig_c = np.where(use, sig, 1.0).reshape(-1)
    kernel = None if psf is None else validate_kernel(psf)
    return img_c, sig_c, use, kernel


def fit_light(image: np.ndarray, sigma: Union[float, np.ndarray], image_grid: ImageGrid,
              psf: Optional[np.ndarray] = None, *, mask: Optional[np.ndarray] = None,
              lens_light: Optional[MGELight] = None, significance: float = 3.0) -> LightFit:
    """Fit the lens galaxy's light alone, as :func:`fit_lens` does first: the centre and each
    group's shape of ``lens_light`` (non-negative amplitudes), on every pixel and then without the
    significant excess it leaves (the arcs). For a reconstruction with a given lens and the lens
    light modelled, so that its light basis is the one a fit would use.

    Parameters
    ----------
    image, sigma, image_grid, psf, mask
        As for :func:`fit_lens`.
    lens_light : MGELight, optional
        The basis (default ``MGELight()``).
    significance : float
        As ``FitConfig.significance``.

    Returns
    -------
    LightFit

    Raises
    ------
    ValueError
        Invalid inputs (naming the parameter), or no significant lensed light left by the light.
    """
    if not isinstance(image_grid, ImageGrid):
        raise ValueError(f"image_grid must be an ImageGrid, got {type(image_grid).__name__}")
    light = MGELight() if lens_light is None else lens_light
    if not isinstance(light, MGELight):
        raise ValueError(f"lens_light must be an MGELight or None, got {type(light).__name__}")
    positive_float("significance", significance)
    img_c, sig_c, use, kernel = _prepared(image, sigma, image_grid, psf, mask)
    light_std = _light_prior_std(img_c, use.reshape(-1))
    prob = _Problem(img_c, sig_c, use.reshape(-1), image_grid, kernel, get_regularization("gradient"),
                    _Space(True, False), light, (1.0,), (0.0,), light_std, None)
    geo = _geometry(prob, significance)
    return LightFit(center=geo.center, q=geo.light_q, phi=geo.light_phi, columns=np.asarray(geo.light_columns),
                    arcs=geo.significant, prior_std=light_std)


def fit_lens(image: np.ndarray, sigma: Union[float, np.ndarray], image_grid: ImageGrid,
             psf: Optional[np.ndarray] = None, *, mask: Optional[np.ndarray] = None, profile: str = "SIE",
             shear: bool = True, lens_light: Optional[MGELight] = None, source_grid: Optional[SourceGrid] = None,
             regularization: Union[str, Regularization] = "gradient", config: FitConfig = FitConfig(),
             progress: Optional[Callable[[FitProgress], None]] = None) -> LensFit:
    """Fit a lens model to an image by maximising the evidence of the pixelated inversion.

    See the module docstring for the method and its stages; no starting guess is needed.

    Parameters
    ----------
    image : ndarray
        ``(n, n)`` observed image (surface brightness, any units), on ``image_grid``. Non-finite
        values are masked.
    sigma : float or ndarray
        Noise standard deviation (image units): scalar or per pixel. Non-finite, non-positive and
        huge values (``>= 1e6`` times the median) mark masked pixels.
    image_grid : ImageGrid
        The image's grid (arcsec); the lens centre is measured from the grid's centre.
    psf : ndarray, optional
        PSF kernel on the image pixels (odd square; normalised to sum 1). None: no blurring.
    mask : ndarray of bool, optional
        ``(n, n)`` pixels to use (True); combined with the bad-pixel mask.
    profile : {"SIE", "EPL"}
        Main mass profile (the EPL's slope is fitted in the refinement).
    shear : bool
        Fit an external shear.
    lens_light : MGELight, optional
        Model the lens galaxy's light jointly (linear amplitudes in the evidence). None: the
        image holds the lensed source only (lens light subtracted).
    source_grid : SourceGrid, optional
        The refinement's source grid (fixed). Default: ``config.source_n`` pixels over the extent
        of the arcs traced through the coarse lens.
    regularization : str or Regularization
        Source regularization form (fixed within the fit).
    config : FitConfig
    progress : callable, optional
        Called with a :class:`FitProgress` after every evidence evaluation (e.g. to drive tqdm).

    Returns
    -------
    LensFit

    Raises
    ------
    ValueError
        Invalid inputs (naming the parameter), or no significant lensed light.
    """
    t_start = time.perf_counter()
    if not isinstance(image_grid, ImageGrid):
        raise ValueError(f"image_grid must be an ImageGrid, got {type(image_grid).__name__}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if lens_light is not None and not isinstance(lens_light, MGELight):
        raise ValueError(f"lens_light must be an MGELight or None, got {type(lens_light).__name__}")
    if source_grid is not None and not isinstance(source_grid, SourceGrid):
        raise ValueError(f"source_grid must be a SourceGrid or None, got {type(source_grid).__name__}")
    if not isinstance(config, FitConfig):
        raise ValueError(f"config must be a FitConfig, got {type(config).__name__}")
    form = get_regularization(regularization)
    img_c, sig_c, use, kernel = _prepared(image, sigma, image_grid, psf, mask)
    use_flat = use.reshape(-1)
    light_std = config.light_prior_std
    if lens_light is not None and light_std is None:
        light_std = _light_prior_std(img_c, use_flat)
    timings: dict[str, float] = {}
    with _threads(config.blas_threads, config.numba_threads):
        prob = _Problem(img_c, sig_c, use_flat, image_grid, kernel, form, _Space(shear, False), lens_light,
                        (1.0,), (0.0,), light_std if light_std is not None else 1.0, progress)
        t = time.perf_counter()
        geo = _geometry(prob, config.significance)
        prob.light_q, prob.light_phi, prob.light_columns = geo.light_q, geo.light_phi, geo.light_columns
        timings["geometry"] = time.perf_counter() - t

        t = time.perf_counter()
        candidates = _candidates(prob, geo)
        b = _bin_factor(image_grid.delta, config.coarse_pixel, float(np.median([R for _, R in candidates])))
        coarse = prob if b == 1 or image_grid.n // b < 16 else _binned_problem(prob, b)
        x, v, _ = _coarse(coarse, candidates, geo, config, shear)
        timings["coarse"] = time.perf_counter() - t

        t = time.perf_counter()
        space = _Space(shear=shear, epl=profile == "EPL")
        if space.epl:
            x = np.append(x, 2.0)
        medium = config.medium and coarse is not prob
        stage = _Stage("refine", space, SourceGrid(config.source_n), config.supersample)
        placed = _Placement(source_grid) if source_grid is not None else \
            _chosen_grid(prob, stage, x, geo, config, evaluate=coarse if medium else prob)
        stage = _placed_stage(stage, placed, x, config.follow_grid and source_grid is None)
        bounds = space.bounds(image_grid.fov)
        steps = 0.3 * space.steps(x[0])
        # Nelder-Mead, restarted once from its own optimum (lam fixed anew); with ``medium`` the
        # first run works on the coarse stage's binned image (the refinement's source grid) and,
        # with ``newton``, the restart is a Newton step on the original pixels
        quad = None
        for problem in (coarse if medium else prob, prob):
            run = replace(stage, name="medium" if problem is not prob else "refine")
            if problem is prob and medium and source_grid is None:
                # placed anew about the medium stage's lens, closer to the truth than the coarse
                # one (a tighter box); fixed from here on
                placed = _chosen_grid(prob, run, x, geo, config)
                run = _placed_stage(run, placed, x, config.follow_grid)
            if problem is prob and medium and config.newton:
                # lam fixed as in a Nelder-Mead run (an evaluation with lam optimised costs about
                # twice as much: 1.02 against 0.55 s on SLACS 2303+1422)
                stage = _stage_lam(prob, run, x, config.lam_mode)
                ref = _newton_refine(prob, stage, x, prob.log_evidence(x, stage), 0.1 * space.steps(x[0]), bounds)
                x, v = ref.x, ref.log_evidence
                if ref.converged:
                    quad = ref.quadratic
                    if config.uncertainties and not _negative_definite(quad.hessian):
                        # the rounds _curvature adds for a flat direction, about the optimum, with
                        # the refinement's evaluations
                        quad = _curvature(prob, stage, x, v, quad.h, bounds, seed=NEWTON_ITERATIONS, rounds=2,
                                          earlier=list(quad.samples) + [(x, v)])
                    break
                log.warning("the Newton refinement did not converge (at most %d steps): Nelder-Mead on the "
                            "original pixels", NEWTON_ITERATIONS)
            stage = _stage_lam(problem, run, x, config.lam_mode)
            x, v = _maximise(problem, stage, x, steps, bounds, config.refine_evaluations)
            steps = 0.3 * steps
        stage_final = replace(stage, lam=None, name="refine")
        v = prob.log_evidence(x, stage_final) if stage.lam is not None else v
        timings["refine"] = time.perf_counter() - t

        t = time.perf_counter()
        cov, hessian_ok, cov_grid, std_curvature, posterior = None, True, None, None, None
        params_std = {k: math.nan for k in space.report(x)}
        if config.uncertainties:
            if quad is None:
                quad = _curvature(prob, replace(stage_final, name="uncertainties"), x, v, 0.1 * space.steps(x[0]),
                                  bounds)
            H, h = quad.hessian, quad.h
            cov, hessian_ok = _covariance(H, h)
            moved = False  # the optimum moved since lam was last fixed
            for _ in range(CLIMB_ROUNDS if not hessian_ok else 0):
                # no maximum: climb on from there (lam fixed at this point, compared at the optimum)
                stage, moved = _stage_lam(prob, stage, x, config.lam_mode), False
                xc, _ = _climb(prob, replace(stage, name="climb"), quad, prob.log_evidence(x, stage), bounds,
                               config.refine_evaluations // 2)
                vc = prob.log_evidence(xc, replace(stage_final, name="climb"))
                log.info("curvature not negative definite: climbed from log evidence %.2f to %.2f (%s)", v, vc,
                         space.report(xc))
                if not vc > v + NEWTON_GAIN:
                    break
                x, v, moved = xc, vc, True
                quad = _curvature(prob, replace(stage_final, name="uncertainties"), x, v, h, bounds)
                H, h = quad.hessian, quad.h
                cov, hessian_ok = _covariance(H, h)
                if hessian_ok:
                    break
            if moved:  # the grid systematics' lam at the new optimum
                stage = _stage_lam(prob, stage, x, config.lam_mode)
            if not hessian_ok:
                log.warning("the curvature of the log evidence is not negative definite at the optimum: "
                            "uncertainties are from its clipped form")
            cov_curvature = cov
            std_curvature = _report_std(space, x, cov)
            if config.grid_systematics and np.all(np.isfinite(cov)):
                # lam fixed as in the refinement (each grid's evaluations then share one prior, all
                # its linear response needs; with lam optimised an evaluation costs about twice as much)
                cov_grid = _grid_systematics(prob, replace(stage, name="grid systematics"), x, cov, h, bounds,
                                             config.grid_systematics)
                cov = cov + cov_grid
            params_std = _report_std(space, x, cov) if cov_grid is not None else std_curvature
            if config.posterior_steps and np.all(np.isfinite(cov)):
                posterior = _posterior(prob, replace(stage, name="posterior"), space, x, cov_curvature, bounds,
                                       config)
                params_std = _posterior_std(posterior, None if cov_grid is None else _report_std(space, x, cov_grid))
        timings["uncertainties"] = time.perf_counter() - t

        lens = space.lens(x)
        res, op, B = prob.invert(prob.stage_lens(stage_final, x), placed.grid, config.supersample)
    model = np.asarray(op.apply(res.source.reshape(-1)))
    light_img = None
    if B is not None:
        light_img = (B @ res.amplitudes).reshape(image_grid.shape)
        model = model + B @ res.amplitudes
    model = model.reshape(image_grid.shape)
    chi2 = float(np.sum(((model - img_c.reshape(image_grid.shape)) / sig_c.reshape(image_grid.shape))[use] ** 2))
    timings["total"] = time.perf_counter() - t_start
    return LensFit(lens=lens, params=space.report(x), params_std=params_std, covariance=cov,
                   fit_names=space.names, inversion=res, source_grid=placed.grid,
                   source_center=_grid_center(stage_final, x),
                   log_evidence=float(res.log_evidence),
                   chi2=chi2, n_pixels=int(use.sum()), model=model, lens_light=light_img,
                   light_amplitudes=None if B is None else _full_amplitudes(lens_light, prob.light_columns,
                                                                            res.amplitudes),
                   light_q=geo.light_q if lens_light is not None else None,
                   light_phi=geo.light_phi if lens_light is not None else None, mask=use,
                   evaluations=dict(prob.evaluations), timings=timings, hessian_ok=hessian_ok,
                   covariance_grid=cov_grid, params_std_curvature=std_curvature, posterior=posterior)
