#!/usr/bin/env python
"""Reconstruct the source of an observed lens (FITS) with the RIM or a Warren-Dye inversion, fitting the lens.

    python scripts/reconstruct.py --image image.fits --noise noise_map.fits --psf psf.fits \\
        --method warren-dye --out results/obs1                      # fits the lens (SIE + shear)
                                                                    # (-v: log its stages)
    python scripts/reconstruct.py --image obs.fits --lens "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2" \\
        --sigma 0.02 --psf-fwhm 0.08 --method warren-dye --out results/obs1

Interferometric data: --visibilities FILE (.npz, uvfits or a measurement set; lensinv.uv) with --lens
reconstructs the source from the visibilities (the lens is not fitted from visibilities) on an
--image-n x --pixel-scale sky grid (default 192 x 0.04 arcsec; refused if it under-samples the
longest baseline), optionally through a Gaussian primary beam (--dish-diameter), with the same
outputs as for an image (fit.json's chi2_per_pixel is then per real datum). --method warren-dye
inverts every visibility in the uv plane; rim runs a RIM trained on visibilities (--checkpoint, from
train_rim.py --preset alma; its sky grid is fixed by its weights) on their dirty image and beam;
rim+wd takes that estimate as the prior mean of the uv-plane inversion.

    python scripts/reconstruct.py --visibilities obs.uvfits --lens "theta_E=0.9,q=0.8,phi=0.3" \
        --method warren-dye --out results/alma1

Without --lens the lens is fitted (``baselines.fit_lens``: evidence maximisation from no guess, a
progress bar on stderr) on the largest centred square cut-out at the native scale, with --profile
SIE|EPL plus an external shear (--no-shear: the profile alone) and, with --lens-light, the lens
galaxy's light modelled jointly (a multi-Gaussian expansion; with --lens, its shapes fitted to the
light alone as the fit does); rim and rim+wd then run the RIM with the fitted lens. lens_std is
the Laplace approximation plus the source grid's systematic part; --posterior-steps N samples the
posterior with emcee instead (posterior.csv, posterior.png). Noise values that are
non-finite or >= 1e6 times the median, non-finite data, non-zero pixels of --mask, discs of
--mask-circle X,Y,R (interlopers; arcsec from the image's centre, repeatable) and pixels outside
--mask-annulus R_IN,R_OUT are masked: never fitted (also with --lens).

Survey batches: --images LIST names folders holding image.fits, noise_map.fits (and psf.fits);
--shard i/k reconstructs those at list positions j % k == i into OUT/<folder name>, skipping
the ones already done (without --overwrite) and going on past a lens that fails (exit status 1).

The image's pixel scale comes from its FITS header (celestial WCS, or a PIXSCALE keyword in
arcsec) or --pixel-scale. A lenstronomy-style HDF5 --image (.h5, .hdf5: image_data, background_rms,
exposure_time, transform_pix2angle) brings its noise, sqrt(background_rms^2 + max(image, 0) /
exposure_time) as lenstronomy computes it, and its pixel scale; an HDF5 --psf its
kernel_point_source. Angles are in the frame of the stored pixels (x along the columns). The
lens is centred at (center_x, center_y) arcsec from the centre of the image. For the RIM the image (and noise map, PSF) are resampled onto the model's grid
(192 x 0.04 arcsec) when they differ; Warren-Dye works on the largest centred square cut-out at
the native scale. Writes OUT/fit.json (DESIGN.md: "lens", "lens_std" (null for a given lens),
"chi2_per_pixel" and "n_pixels" over the fitted pixels, "log_evidence" (null for the RIM alone),
"method"), OUT/source.fits (header: method, grid, lens), OUT/model.fits (model, normalised
residuals, mask, lens light; the residuals' coherence on the arcs in its header), OUT/fit.png
(data, model, normalised residuals, source, lens light) and OUT/reconstruction.png. It never
overwrites an earlier result (a folder holding source.fits, model.fits, fit.json or a figure)
without --overwrite; that is checked, like
every flag, before any work.

For the RIM, --source-n (and the image) must fit the model: its source grid is fixed by its
weights, and an image covering less than half of the model's field in either direction, or with
fewer than 16 pixels on a side, is refused rather than zero-padded into an invented observation.
The RIM sees masked pixels as zeros (it has no mask); rim+wd's inversion leaves them out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import lensinv  # noqa: E402
from baselines import FORMS, SELECTIONS  # noqa: E402
from baselines.lens_fit import PROFILES, FitConfig  # noqa: E402
from lensinv.cli import int_at_least, positive_float, shard_spec  # noqa: E402
from lensinv.io import (atomic_write, is_hdf5, read_fits_image, read_lenstronomy_image,  # noqa: E402
                        read_lenstronomy_psf, write_text_atomic)
from lensinv.metrics import ResidualCoherence, residual_coherence  # noqa: E402
from lensinv.psf import kernel_fwhm, negative_flux_fraction  # noqa: E402

LENS_KEYS = ("theta_E", "q", "phi", "gamma", "gamma_phi", "center_x", "center_y")
#: the files of a result: an --out folder holding one of them is not overwritten without --overwrite
RESULT_FILES = ("source.fits", "model.fits", "fit.json", "fit.png", "reconstruction.png", "posterior.csv",
                "posterior.png")
#: the RIM refuses images covering less than this fraction of its field per side, or with fewer pixels
RIM_MIN_COVERAGE = 0.5
RIM_MIN_PIXELS = 16
#: settings of the lens fit (None: ``baselines.FitConfig()``; --source-n sets its ``source_n``); tests
#: replace it with a quicker configuration
FIT_CONFIG: FitConfig | None = None


def odd_int_at_least_3(text: str) -> int:
    """argparse type: an odd integer >= 3."""
    v = int_at_least(3)(text)
    if v % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd integer >= 3, got {v}")
    return v


def parse_lens(text: str) -> lensinv.Lens:
    """``"theta_E=...,q=...,phi=...,gamma=...,gamma_phi=...,center_x=...,center_y=..."`` (arcsec, radians)."""
    values = {"q": 1.0, "phi": 0.0, "gamma": 0.0, "gamma_phi": 0.0, "center_x": 0.0, "center_y": 0.0}
    given = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"--lens entries must be key=value, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in LENS_KEYS:
            raise ValueError(f"unknown lens parameter {k!r}; use {', '.join(LENS_KEYS)}")
        if k in given:
            raise ValueError(f"--lens gives {k} more than once")
        given.add(k)
        try:
            values[k] = float(v)
        except ValueError:
            raise ValueError(f"lens parameter {k} must be a number, got {v!r}") from None
    if "theta_E" not in values:
        raise ValueError("--lens needs theta_E")
    return lensinv.Lens(lensinv.SIE(values["theta_E"], values["q"], values["phi"], (values["center_x"], values["center_y"])),
                        lensinv.ExternalShear(values["gamma"], values["gamma_phi"]))


def pixel_scale_from_header(header) -> float | None:
    """Pixel scale in arcsec from a celestial WCS (square pixels) or a PIXSCALE keyword."""
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w = WCS(header)
        except Exception as exc:
            raise ValueError(f"invalid WCS in the FITS header: {exc}") from exc
    if w.has_celestial:
        scales = w.celestial.proj_plane_pixel_scales()
        a, b = (float(s.to_value("arcsec")) for s in scales)
        if not math.isclose(a, b, rel_tol=1e-3):
            raise ValueError(f"pixels are not square ({a:.5g} x {b:.5g} arcsec)")
        return a
    if "PIXSCALE" in header:
        try:
            v = float(header["PIXSCALE"])
        except (TypeError, ValueError):
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"the FITS header's PIXSCALE is {header['PIXSCALE']!r}, not a pixel scale > 0 arcsec; "
                             "pass --pixel-scale")
        return v
    return None


def centred_square(a: np.ndarray) -> np.ndarray:
    n = min(a.shape)
    i0, j0 = (a.shape[0] - n) // 2, (a.shape[1] - n) // 2
    return a[i0:i0 + n, j0:j0 + n]


def crop_centred(a: np.ndarray, side: float, scale: float) -> np.ndarray:
    """The central ``side`` arcsec of ``a`` (per axis the nearest pixel count of the axis's parity, so
    that the image's centre stays the centre; at most the whole axis).

    Raises
    ------
    ValueError
        Fewer than 8 pixels would remain on a side.
    """
    out = a
    for axis, size in enumerate(a.shape):
        m = int(round(side / scale))
        m = min(size, m + ((size - m) % 2))
        if m < 8:
            raise ValueError(f"--crop {side:g} arcsec leaves {m} pixels of {scale:g} arcsec on a side; "
                             "at least 8 are needed")
        r = (size - m) // 2
        out = np.take(out, np.arange(r, r + m), axis=axis)
    return out


def cutout_offset(shape: tuple[int, int], scale: float) -> tuple[float, float]:
    """Where the centre of :func:`centred_square`'s cut-out lies from the image's centre, ``(dx, dy)`` arcsec.

    Zero unless the sides differ by an odd number of pixels (then half a pixel).
    """
    n = min(shape)
    i0, j0 = (shape[0] - n) // 2, (shape[1] - n) // 2
    return (j0 + (n - 1) / 2 - (shape[1] - 1) / 2) * scale, (i0 + (n - 1) / 2 - (shape[0] - 1) / 2) * scale


def shift_lens(lens: lensinv.Lens, dx: float, dy: float) -> lensinv.Lens:
    """The lens with its main profile's centre moved by ``(dx, dy)`` arcsec (a change of origin)."""
    if dx == 0 and dy == 0:
        return lens
    main_, *rest = lens.components
    moved = dataclasses.replace(main_, center=(float(main_.center[0]) + dx, float(main_.center[1]) + dy))
    return lensinv.Lens(moved, *rest)


def resample(a: np.ndarray, scale_in: float, grid: lensinv.ImageGrid) -> np.ndarray:
    """Bilinear resampling of surface brightness onto ``grid`` (centres aligned, zero outside)."""
    x, y = grid.coordinates()
    cols = x / scale_in + (a.shape[1] - 1) / 2
    rows = y / scale_in + (a.shape[0] - 1) / 2
    return ndimage.map_coordinates(a, [rows, cols], order=1, mode="constant", cval=0.0)


def check_rim_coverage(shape: tuple[int, int], scale: float, grid: lensinv.ImageGrid) -> None:
    """Refuse an image that would be mostly zero padding (or a handful of pixels) on the RIM's grid.

    Parameters
    ----------
    shape : tuple of int
        The image's shape (rows, columns).
    scale : float
        Its pixel scale in arcsec.
    grid : ImageGrid
        The model's image grid.

    Raises
    ------
    ValueError
        The image covers less than ``RIM_MIN_COVERAGE`` of the grid's side in either direction, or
        has fewer than ``RIM_MIN_PIXELS`` pixels on a side.
    """
    side = grid.n * grid.pixel_scale
    ny, nx = shape
    if min(shape) < RIM_MIN_PIXELS or min(ny, nx) * scale < RIM_MIN_COVERAGE * side:
        raise ValueError(f"--image is {ny} x {nx} pixels of {scale:.4g} arcsec ({ny * scale:.3g} x {nx * scale:.3g} "
                         f"arcsec): too small for the RIM's {grid.n} x {grid.pixel_scale:g} arcsec grid ({side:.3g} "
                         f"arcsec), which needs at least {RIM_MIN_PIXELS} pixels and {RIM_MIN_COVERAGE:.0%} of its "
                         "field on a side; the rest would be invented zeros. Use a larger cut-out or "
                         "--method warren-dye")


def read_image_list(path: Path) -> list[Path]:
    """The folders of an ``--images`` list (one a line, ``#`` comments, relative to the list's folder).

    Raises
    ------
    ValueError
        A missing or empty list, a folder that does not exist or lacks image.fits or noise_map.fits,
        or two folders of one name (their results would share ``OUT/<name>``).
    """
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    folders, names = [], set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        f = Path(line) if Path(line).is_absolute() else path.parent / line
        for need in ("image.fits", "noise_map.fits"):
            if not (f / need).is_file():
                raise ValueError(f"{f} has no {need}")
        if f.name in names:
            raise ValueError(f"two folders named {f.name!r}: their results would share one folder")
        names.add(f.name)
        folders.append(f)
    if not folders:
        raise ValueError(f"{path} lists no folder")
    return folders


def _floats(text: str, count: int, flag: str) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{flag} needs {count} finite numbers separated by commas, got {text!r}")
    return values


#: flags whose values may start with a minus sign (a centre left of or below the image's centre)
SIGNED_FLAGS = ("--mask-circle",)


def _joined_negative_values(argv: list[str]) -> list[str]:
    """``--mask-circle -2.2,1.9,0.3`` as ``--mask-circle=-2.2,1.9,0.3``: argparse takes a value that starts with
    ``-`` and is not a plain number for a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SIGNED_FLAGS and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def mask_circle(text: str) -> tuple[float, float, float]:
    """``--mask-circle X,Y,R`` (arcsec; R > 0)."""
    x, y, r = _floats(text, 3, "--mask-circle")
    if r <= 0:
        raise argparse.ArgumentTypeError(f"--mask-circle radius must be > 0 arcsec, got {r!r}")
    return x, y, r


def mask_annulus(text: str) -> tuple[float, float]:
    """``--mask-annulus R_IN,R_OUT`` (arcsec; 0 <= R_IN < R_OUT)."""
    r_in, r_out = _floats(text, 2, "--mask-annulus")
    if not 0 <= r_in < r_out:
        raise argparse.ArgumentTypeError(f"--mask-annulus needs 0 <= R_IN < R_OUT (arcsec), got {text!r}")
    return r_in, r_out


def read_mask(spec: Path, shape: tuple[int, int]) -> np.ndarray:
    """The ``--mask`` file as pixels to use (True): non-zero (or non-finite) values mark masked pixels.

    Parameters
    ----------
    spec : Path
        FITS file (``file.fits[EXT]`` allowed) of the image's shape.
    shape : tuple of int
        The image's shape.

    Returns
    -------
    ndarray of bool
    """
    m = read_fits_image(spec, name="--mask").data
    if m.shape != shape:
        raise ValueError(f"--mask shape {m.shape} differs from the image's {shape}")
    return ~((m != 0) | ~np.isfinite(m))


def lens_params(lens: lensinv.Lens) -> dict[str, float]:
    """The ``fit.json`` keys of a lens given with ``--lens`` (an SIE plus external shear)."""
    main_, shear = lens.components[0], lens.components[1]
    return {"theta_E": float(main_.theta_E), "q": float(main_.q), "phi": float(main_.phi),
            "center_x": float(main_.center[0]), "center_y": float(main_.center[1]),
            "gamma": float(shear.gamma), "gamma_phi": float(shear.phi)}


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class _Progress:
    """A tqdm bar over the fit's evidence evaluations (stage and best log evidence as postfix)."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(desc="fitting the lens", unit="eval", file=sys.stderr, mininterval=0.5)
        self.stage = ""

    def __call__(self, p) -> None:
        if p.stage != self.stage:
            self.stage = p.stage
            self.bar.set_description(f"fit: {p.stage}")
        self.bar.update(1)
        if self.bar.n % 10 == 0:
            self.bar.set_postfix(best_logZ=f"{p.best_log_evidence:.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _verbose(enabled: bool):
    """With ``enabled``: the library's INFO messages on stderr for the duration (the handler is
    removed after, so a caller in the same process is left as it was)."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=None,
                    help="observed image (FITS; file.fits[EXT] allowed), or a lenstronomy-style HDF5 file (.h5/.hdf5: image_data, background_rms, exposure_time, transform_pix2angle), which also gives the noise and pixel scale")
    ap.add_argument("--visibilities", type=Path, default=None,
                    help="instead of --image: interferometric visibilities (.npz, uvfits or a measurement-set "
                         "folder; see lensinv.uv); needs --lens; the model's sky is the image grid of "
                         "--image-n x --pixel-scale (default 192 x 0.04 arcsec)")
    ap.add_argument("--image-n", type=int_at_least(8), default=None,
                    help="with --visibilities: image-grid pixels per side (default 192)")
    ap.add_argument("--dish-diameter", type=positive_float, default=None,
                    help="with --visibilities: apply a Gaussian primary beam of FWHM 1.13 lambda / D of dishes of "
                         "this diameter (metres; ALMA 12) at the data's frequency (default: no primary beam)")
    ap.add_argument("--images", type=Path, default=None,
                    help="instead of --image: a text file listing folders (one a line; # comments; relative to "
                         "the file), each holding image.fits, noise_map.fits and optionally psf.fits; results go "
                         "to OUT/<folder name>, and lenses with a result there are skipped without --overwrite")
    ap.add_argument("--shard", type=shard_spec, default=None,
                    help="i/k with 0 <= i < k: with --images, only the lenses at list positions j with j %% k == i")
    ap.add_argument("--lens", default=None,
                    help='e.g. "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2"; default: fit the lens')
    noise = ap.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=Path, help="noise (sigma) map, FITS, same pixels as the image; non-finite "
                                                  "values or >= 1e6 x the median mark masked pixels (default with "
                                                  "an HDF5 --image: its own, as lenstronomy computes it)")
    noise.add_argument("--sigma", type=positive_float, help="uniform noise sigma (image units)")
    psf = ap.add_mutually_exclusive_group()
    psf.add_argument("--psf", type=Path, help="PSF kernel at the image's pixel scale: FITS (file.fits[EXT] allowed) or "
                     "lenstronomy-style HDF5 (.h5/.hdf5, kernel_point_source)")
    psf.add_argument("--psf-fwhm", type=positive_float, help="Gaussian PSF FWHM in arcsec (> 0)")
    ap.add_argument("--mask", type=Path, default=None, help="FITS of the image's shape: non-zero = masked")
    ap.add_argument("--mask-circle", type=mask_circle, action="append", default=None, metavar="X,Y,R",
                    help="mask a disc (an interloper): centre x,y and radius r in arcsec, x along columns and y along "
                         "rows from the image's centre (as --lens's centre); repeatable")
    ap.add_argument("--mask-annulus", type=mask_annulus, default=None, metavar="R_IN,R_OUT",
                    help="fit only pixels at R_IN <= r < R_OUT arcsec from the image's centre")
    ap.add_argument("--psf-size", type=odd_int_at_least_3, default=None,
                    help="use the central N x N of the --psf kernel, renormalised (odd N >= 3; the wings lost are "
                         "its flux outside N x N). Rarely worth it: big kernels take the FFT or gemm route of the "
                         "normal matrix, whose cost grows far less with the kernel than the direct route's")
    ap.add_argument("--crop", type=positive_float, default=None,
                    help="work on the central ARCSEC x ARCSEC of the image (about the image's centre; a fit's "
                         "cost grows with the pixels: a ring of radius R needs about 2.5 R + the PSF)")
    ap.add_argument("--profile", choices=PROFILES, default=None,
                    help="mass profile of the lens fit (default SIE; needs no --lens)")
    ap.add_argument("--no-shear", action="store_true",
                    help="fit the mass profile alone, without an external shear (as e.g. SLACS' SIE models; "
                         "needs no --lens)")
    ap.add_argument("--lens-light", action="store_true",
                    help="model the lens galaxy's light jointly (multi-Gaussian expansion, linear amplitudes)")
    ap.add_argument("--method", choices=["rim", "warren-dye", "rim+wd"], default="rim",
                    help="rim+wd: the RIM estimate as the prior mean of an evidence-optimised Warren-Dye inversion "
                         "(gradient or curvature, whichever has the higher evidence; see --rim-wd-select)")
    ap.add_argument("--rim-wd-select", choices=list(SELECTIONS), default="binned",
                    help="rim+wd's choice of form: by the evidence of the 2x2-binned source, solving the winner alone "
                         "(binned, the default: half the time) or of both forms' full inversions (full); sources of "
                         "up to 1,500 pixels are always compared in full")
    ap.add_argument("--regularization", choices=FORMS, default="gradient", help="for warren-dye")
    ap.add_argument("--checkpoint", default=None, help="RIM weights (default: shipped)")
    # rim.TRANSFORM_COUNTS and rim.DEFAULT_TRANSFORMS (rim is imported only where a RIM runs; a test checks them)
    ap.add_argument("--rim-transforms", type=int, choices=[1, 2, 4, 8], default=2,
                    help="average the RIM's estimate over this many turns and mirrors of the observation (rim.symmetry; "
                         "1: one pass of the network; 4 and 8: two and four times the time of 2, smaller errors); "
                         "default 2")
    ap.add_argument("--pixel-scale", type=positive_float, default=None,
                    help="arcsec/pixel (> 0); default: from the FITS header")
    ap.add_argument("--source-n", type=int_at_least(2), default=None,
                    help="source pixels per side (default 64, or the fit's; for the RIM, the model's)")
    ap.add_argument("--source-fov", type=positive_float, default=None,
                    help="arcsec (default 1.5, or for warren-dye without --lens, the fit's: a box about the "
                         "source's traced flux, centred on it; given, the grid is centred on the origin); "
                         "source.fits' SRC_X0, SRC_Y0 give the grid's centre")
    ap.add_argument("--posterior-steps", type=int_at_least(0), default=0,
                    help="with the lens fitted: sample its posterior with emcee (baselines.posterior), this many "
                         "steps of 2 x parameters + 2 walkers from the curvature's Gaussian (walkers x steps "
                         "full-resolution evaluations); lens_std is then the samples' spread; writes posterior.csv "
                         "and posterior.png. Default 0: the curvature's (Laplace) uncertainties")
    ap.add_argument("--out", type=Path, required=True, help="result folder (created)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="report the library's steps (logging at INFO: the lens fit's stages, Newton steps)")
    args = ap.parse_args(_joined_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if sum(a is not None for a in (args.image, args.images, args.visibilities)) != 1:
        ap.error("one of the arguments --image --images --visibilities is required (only one)")
    if args.visibilities is not None:
        with _verbose(args.verbose):
            return main_visibilities(ap, args)
    for flag in ("image_n", "dish_diameter"):
        if getattr(args, flag) is not None:
            ap.error(f"argument --{flag.replace('_', '-')}: only with --visibilities")
    if args.images is None and args.noise is None and args.sigma is None and not is_hdf5(args.image):
        ap.error("one of the arguments --noise --sigma is required")
    if args.images is not None and (args.noise is not None or args.psf is not None or args.sigma is not None):
        ap.error("argument --images: each folder has its noise_map.fits and psf.fits; omit --noise, --sigma "
                 "and --psf")
    if args.psf_size is not None and args.psf is None and args.images is None:
        ap.error("argument --psf-size: needs a --psf kernel (or --images folders with psf.fits)")
    if args.shard is not None and args.images is None:
        ap.error("argument --shard: needs --images")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"argument --out: {args.out} exists and is not a folder")
    folders = []
    if args.images is not None:
        try:
            folders = read_image_list(args.images)
        except ValueError as exc:
            ap.error(f"argument --images: {exc}")
    else:
        earlier = [name for name in RESULT_FILES if (args.out / name).exists()]
        if earlier and not args.overwrite:
            ap.error(f"argument --out: {args.out} already holds a result ({', '.join(earlier)}); "
                     "pass --overwrite to replace it")
    if args.lens_light and args.method == "rim":
        ap.error("argument --lens-light: needs a Warren-Dye inversion; use --method warren-dye or rim+wd")
    if args.lens is not None and args.profile is not None:
        ap.error("argument --profile: the lens is given (--lens, an SIE), not fitted; omit one of them")
    if args.no_shear and args.lens is not None:
        ap.error("argument --no-shear: the lens is given (--lens), not fitted; omit one of them")
    if args.posterior_steps and args.lens is not None:
        ap.error("argument --posterior-steps: the lens is given (--lens), not fitted; omit one of them")
    if args.posterior_steps == 1:
        ap.error("argument --posterior-steps: 0 (no sampling) or at least 2")
    if args.lens is not None:
        try:
            args.lens_model = parse_lens(args.lens)
        except ValueError as exc:
            ap.error(f"argument --lens: {exc}")
    else:
        args.lens_model = None
    if args.profile is None:
        args.profile = "SIE"
    with _verbose(args.verbose):
        if args.images is not None:
            return run_batch(args, folders)
        try:
            return run(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


def run_batch(args: argparse.Namespace, folders: list[Path]) -> int:
    """Reconstruct the lenses of ``--images`` in this ``--shard``, one after another.

    A lens whose ``OUT/<folder name>`` holds a result is skipped without ``--overwrite``; a lens
    that fails (bad files, no lensed light) is reported and the batch goes on.

    Returns
    -------
    int
        0 if every lens of the shard succeeded or was skipped, else 1.
    """
    i, k = args.shard if args.shard is not None else (0, 1)
    mine = [f for j, f in enumerate(folders) if j % k == i]
    failed = []
    for n, folder in enumerate(mine, 1):
        out = args.out / folder.name
        label = f"[{n}/{len(mine)}] {folder.name}"
        if not args.overwrite and any((out / name).exists() for name in RESULT_FILES):
            print(f"{label}: {out} already holds a result; skipped (--overwrite replaces it)", file=sys.stderr)
            continue
        one = argparse.Namespace(**vars(args))
        one.image, one.noise, one.out = folder / "image.fits", folder / "noise_map.fits", out
        one.psf = folder / "psf.fits" if (folder / "psf.fits").exists() and not args.psf_fwhm else None
        print(f"{label}", file=sys.stderr)
        try:
            run(one)
        except Exception as exc:  # noqa: BLE001 - one lens's failure must not end a survey batch
            print(f"{label}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(folder.name)
    if failed:
        print(f"{len(failed)} of {len(mine)} lenses failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _light_basis(grid: lensinv.ImageGrid, lens: lensinv.Lens, kernel, image: np.ndarray, sigma: np.ndarray,
                 use: np.ndarray):
    """MGE lens-light columns about the given lens's centre, with the shapes (and kept columns) of
    the light fitted alone as the lens fit does (``baselines.fit_light``), and their prior std."""
    from baselines import MGELight, fit_light

    light = MGELight()
    shapes = fit_light(image, sigma, grid, kernel, mask=use, lens_light=light)
    c = lens.components[0].center
    return shapes.basis(light, grid, (float(c[0]), float(c[1])), kernel), shapes.prior_std


def run(args) -> int:
    import json

    import baselines

    lens = args.lens_model
    h5_sigma = None
    if is_hdf5(args.image):  # lenstronomy's layout: the noise and the pixel scale come with it
        li = read_lenstronomy_image(args.image, name="--image")
        image, h5_sigma = li.data, li.sigma
        scale = args.pixel_scale if args.pixel_scale is not None else li.pixel_scale
    else:
        fi = read_fits_image(args.image, name="--image")
        image = fi.data
        scale = args.pixel_scale if args.pixel_scale is not None else pixel_scale_from_header(fi.header)
    if scale is None:
        raise ValueError("no pixel scale: the FITS header has no celestial WCS or PIXSCALE; pass --pixel-scale")
    if args.noise is not None:
        sigma = read_fits_image(args.noise, name="--noise").data
        if sigma.shape != image.shape:
            raise ValueError(f"noise map shape {sigma.shape} differs from the image's {image.shape}")
    elif args.sigma is not None:
        sigma = np.full(image.shape, args.sigma)
    else:
        sigma = h5_sigma
    # pixels holding data: finite data, finite noise > 0 below 1e6 x the median, not in --mask
    use = baselines.bad_pixel_mask(sigma, image)
    n_bad = int((~use).sum())
    if args.mask is not None:
        use &= read_mask(args.mask, image.shape)
    if args.mask_circle or args.mask_annulus is not None:
        use &= baselines.region_mask(image.shape, scale, circles=tuple(args.mask_circle or ()),
                                     annulus=args.mask_annulus)
    if args.crop is not None:
        image, sigma, use = (crop_centred(a, args.crop, scale) for a in (image, sigma, use))
    if not use.any():
        raise ValueError("no pixel left to fit: every pixel is masked (--mask, non-finite or huge noise, "
                         "non-finite data)")
    if n_bad:
        print(f"{n_bad} pixels masked for non-finite or huge noise or non-finite data", file=sys.stderr)
    # masked pixels: finite placeholders, never fitted
    med_sigma = float(np.median(sigma[use]))
    image = np.where(use, image, 0.0)
    sigma = np.where(use, sigma, med_sigma)
    kernel = None
    if args.psf is not None:
        raw = read_lenstronomy_psf(args.psf, name="--psf") if is_hdf5(args.psf) else \
            read_fits_image(args.psf, name="--psf").data
        kernel = lensinv.validate_kernel(clip_psf_noise(raw), name="--psf")
        if args.psf_size is not None and args.psf_size < kernel.shape[0]:
            h, c = args.psf_size // 2, kernel.shape[0] // 2
            kernel = lensinv.validate_kernel(kernel[c - h:c + h + 1, c - h:c + h + 1])

    fit = None
    light_img = None
    if lens is None:  # fit the lens on the centred square cut-out at the native scale
        sq_img, sq_sig, sq_use = centred_square(image), centred_square(sigma), centred_square(use)
        sq_grid = lensinv.ImageGrid(sq_img.shape[0], scale)
        fit_kernel = kernel if not args.psf_fwhm else lensinv.gaussian_psf(args.psf_fwhm, scale)
        cfg = FIT_CONFIG if FIT_CONFIG is not None else FitConfig()
        if args.source_n is not None and args.method == "warren-dye":
            cfg = dataclasses.replace(cfg, source_n=args.source_n)
        if args.posterior_steps:
            cfg = dataclasses.replace(cfg, posterior_steps=args.posterior_steps)
        src_grid = None
        if args.method == "warren-dye" and args.source_fov is not None:
            src_grid = lensinv.SourceGrid(cfg.source_n, args.source_fov)
        bar = _Progress()
        try:
            fit = baselines.fit_lens(sq_img, sq_sig, sq_grid, fit_kernel, mask=sq_use, profile=args.profile,
                                     shear=not args.no_shear,
                                     lens_light=baselines.MGELight() if args.lens_light else None,
                                     source_grid=src_grid, regularization=args.regularization, config=cfg,
                                     progress=bar)
        finally:
            bar.close()
        dx, dy = cutout_offset(image.shape, scale)
        lens = shift_lens(fit.lens, dx, dy)  # from the image's centre, as --lens is
        p = dict(fit.params, center_x=fit.params["center_x"] + dx, center_y=fit.params["center_y"] + dy)
        described = args.profile + ("" if args.no_shear else " + shear") + (" + lens light" if args.lens_light else "")
        print(f"lens fit ({described}): theta_E {p['theta_E']:.4f}, "
              f"q {p['q']:.3f}, centre ({p['center_x']:.3f}, {p['center_y']:.3f}) arcsec; chi2/N "
              f"{fit.chi2_per_pixel:.3f} over {fit.n_pixels} pixels; {fit.timings['total']:.1f} s", file=sys.stderr)
        if not fit.hessian_ok:
            print("warning: the log evidence is not curved downwards in every direction at the fitted lens: it may "
                  "not be the optimum (in the validation on simulated lenses such fits had missed the true "
                  "lens: docs/real_observations.md), and lens_std is from the clipped curvature. Check the "
                  "residuals; try --crop, --mask or --profile.", file=sys.stderr)

    if args.method in ("rim", "rim+wd"):
        import rim

        model = rim.load_pretrained(args.checkpoint)
        grid = lensinv.ImageGrid(model.config.image_n, 0.04)
        if args.source_n is not None and args.source_n != model.config.source_n:
            raise ValueError(f"--source-n {args.source_n} does not fit the RIM, whose source grid is "
                             f"{model.config.source_n} pixels per side; omit --source-n or use --method warren-dye")
        source_grid = lensinv.SourceGrid(model.config.source_n, 1.5 if args.source_fov is None else args.source_fov)
        src_center = (0.0, 0.0)
        check_rim_coverage(image.shape, scale, grid)
        same = image.shape == grid.shape and math.isclose(scale, grid.pixel_scale, rel_tol=1e-6)
        if not same:  # resample surface brightness (and the noise map, as an approximation) onto the model grid
            image = resample(image, scale, grid)
            sigma = np.maximum(resample(sigma, scale, grid), np.min(sigma[sigma > 0]))
            # a model pixel is used only where every input pixel it draws on is
            use = resample(use.astype(np.float64), scale, grid) > 1 - 1e-6
            if kernel is not None:
                kernel = lensinv.validate_kernel(ndimage.zoom(kernel, scale / grid.pixel_scale, order=1))
                if kernel.shape[0] % 2 == 0:
                    kernel = lensinv.validate_kernel(np.pad(kernel, ((0, 1), (0, 1))))
        if args.psf_fwhm:
            kernel = lensinv.gaussian_psf(args.psf_fwhm, grid.pixel_scale)
        op = lensinv.operator(lens, grid, source_grid, psf=kernel)
        sig = float(np.median(sigma)) if np.allclose(sigma, sigma.flat[0]) else sigma
        source = model.reconstruct(op, image, sig, transforms=args.rim_transforms)
        extra = {"CKPT": str(args.checkpoint or "shipped"), "RIMTRF": args.rim_transforms}
        fitted, log_ev = use, None
        model_image = op.apply(source)
        if args.method == "rim+wd":
            fitted = baselines.arc_mask(image, sigma) & use
            kw = {}
            if args.lens_light:
                B, std = _light_basis(grid, lens, kernel, image, sigma, fitted)
                kw = {"basis": B, "basis_std": std}
            res = baselines.invert_by_evidence(op, image, sigma, forms=("gradient", "curvature"), prior_mean=source,
                                               mask=fitted, select=args.rim_wd_select, **kw)
            source, log_ev = res.source, float(res.log_evidence)
            model_image = op.apply(source)
            if args.lens_light:
                light_img = (kw["basis"] @ res.amplitudes).reshape(grid.shape)
                model_image = model_image + light_img
            extra.update({"REGUL": res.regularization, "LAMBDA": res.lam, "LOGEV": res.log_evidence,
                          "CHI2N": res.reduced_chi2})
    elif fit is not None:
        image, sigma = centred_square(image), centred_square(sigma)
        grid = lensinv.ImageGrid(image.shape[0], scale)
        source, source_grid, model_image, light_img = fit.source, fit.source_grid, fit.model, fit.lens_light
        src_center = (fit.source_center[0] + dx, fit.source_center[1] + dy)  # the image's frame
        kernel = fit_kernel
        fitted, log_ev = fit.mask, float(fit.log_evidence)
        extra = {"REGUL": args.regularization, "LAMBDA": fit.inversion.lam, "LOGEV": fit.log_evidence,
                 "CHI2N": fit.chi2_per_pixel, "PROFILE": args.profile}
    else:
        source_grid = lensinv.SourceGrid(64 if args.source_n is None else args.source_n,
                                         1.5 if args.source_fov is None else args.source_fov)
        dx, dy = cutout_offset(image.shape, scale)
        image, sigma, use = centred_square(image), centred_square(sigma), centred_square(use)
        grid = lensinv.ImageGrid(image.shape[0], scale)
        if args.psf_fwhm:
            kernel = lensinv.gaussian_psf(args.psf_fwhm, scale)
        op = lensinv.operator(shift_lens(lens, -dx, -dy), grid, source_grid, psf=kernel)
        src_center = (dx, dy)  # the cut-out's centre, in the image's frame
        fitted = baselines.arc_mask(image, sigma) & use
        kw = {}
        if args.lens_light:
            B, std = _light_basis(grid, shift_lens(lens, -dx, -dy), kernel, image, sigma, fitted)
            kw = {"basis": B, "basis_std": std}
        res = baselines.invert(op, image, sigma, regularization=args.regularization, mask=fitted, **kw)
        source, log_ev = res.source, float(res.log_evidence)
        model_image = op.apply(source)
        if args.lens_light:
            light_img = (kw["basis"] @ res.amplitudes).reshape(grid.shape)
            model_image = model_image + light_img
        extra = {"REGUL": args.regularization, "LAMBDA": res.lam, "LOGEV": res.log_evidence, "CHI2N": res.reduced_chi2}

    n_fit = int(fitted.sum())
    chi2 = float(np.sum(((image - model_image) / sigma)[fitted] ** 2))
    if fit is not None:
        params = p
        params_std = {k: _finite_or_none(v) for k, v in fit.params_std.items()}
        if not any(v is not None for v in params_std.values()):
            params_std = None
    else:
        params, params_std = lens_params(lens), None
    result = {"lens": params, "lens_std": params_std, "chi2_per_pixel": chi2 / n_fit if n_fit else None,
              "n_pixels": n_fit, "log_evidence": _finite_or_none(log_ev), "method": args.method}

    write_source(args.out, source, source_grid, grid.pixel_scale, args.method, fit is not None, params, extra,
                 src_center)
    write_text_atomic(args.out / "fit.json", json.dumps(result, indent=2) + "\n")
    if fit is not None and fit.posterior is not None:
        write_posterior(args.out, fit.posterior, (dx, dy), params)

    resid = np.where(fitted, (image - model_image) / sigma, np.nan)
    coherence = write_model(args.out, model_image, light_img, resid, fitted, sigma, kernel, grid.pixel_scale)
    bright = {} if light_img is None else {"norm": brightness_norm(image[use], sigma[use])}
    panels = [(np.where(use, image, np.nan), grid.extent, "data", bright),
              (model_image, grid.extent, "model", bright),
              (resid, grid.extent, "normalised residual (fitted pixels)", {"cmap": "RdBu_r", "vmin": -5, "vmax": 5}),
              (source, shifted_extent(source_grid, src_center), f"source ({args.method})", {})]
    if light_img is not None:  # the lensed light itself, and the light model on the data's stretch
        panels += [(np.where(use, image - light_img, np.nan), grid.extent, "data - lens light", {}),
                   (light_img, grid.extent, "lens light", bright)]
    save_figure(args.out / "fit.png", panels)
    save_figure(args.out / "reconstruction.png", [panels[0], panels[3], panels[1], panels[2]])
    print(f"wrote {args.out / 'source.fits'}, model.fits, fit.json, fit.png and reconstruction.png "
          f"(chi2/N {result['chi2_per_pixel']:.3f} over {n_fit} pixels)")
    if coherence is not None:
        print(f"residuals on the arcs ({coherence.n_pixels} pixels), smoothed over the PSF: mean z^2 "
              f"{coherence.mean_z2:.2f}, {100 * coherence.fraction_above_3:.2f}% beyond 3 sigma, max |z| "
              f"{coherence.max_abs_z:.1f} (white noise: 1, 0.27%, a few)")
        if math.isfinite(coherence.reference_rms):
            print(f"the background's smoothed residuals: rms z {coherence.reference_rms:.2f} (white noise: 1; "
                  f"correlated noise, e.g. drizzled, or a misfit raise it); arcs relative to it: mean z^2 "
                  f"{coherence.mean_z2_relative:.2f}", file=sys.stderr)
    return 0


#: negative PSF pixels holding at most this fraction of the kernel's |flux| are taken for the noise of
#: a measured PSF and set to zero; more is refused
PSF_NEGATIVE_TOLERANCE = 0.01


def clip_psf_noise(kernel: np.ndarray) -> np.ndarray:
    """A measured PSF with its small negative pixels (noise; e.g. Euclid's VIS_PSF dips to -6e-6 of a
    unit sum) set to zero, saying so on stderr; unchanged where it has none, or where they hold more
    than ``PSF_NEGATIVE_TOLERANCE`` of its |flux| (then :func:`lensinv.validate_kernel` refuses it)."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or not np.all(np.isfinite(k)) or not np.any(k < 0):
        return k
    neg = negative_flux_fraction(k)
    if neg > PSF_NEGATIVE_TOLERANCE:
        return k
    print(f"--psf: {int((k < 0).sum())} negative pixels ({100 * neg:.3g}% of |flux|, noise of a measured PSF) "
          "set to zero", file=sys.stderr)
    return np.clip(k, 0.0, None)


def write_model(out: Path, model_image: np.ndarray, light_img: np.ndarray | None, resid: np.ndarray,
                fitted: np.ndarray, sigma: np.ndarray, kernel: np.ndarray | None,
                scale: float) -> ResidualCoherence | None:
    """``out/model.fits`` (atomic): HDUs MODEL (image units), RESIDUAL ((data - model) / sigma, NaN
    where not fitted), MASK (1 = fitted) and, with the lens light, LENS_LIGHT; the primary header
    holds how coherent the residuals are on the arcs (:func:`lensinv.metrics.residual_coherence`
    smoothed over the PSF's sigma, on the fitted pixels where the lensed source's model exceeds the
    noise; COH_BKG and COH_Z2R calibrate it on the background, where neither the source's nor
    the lens galaxy's model is bright). Returns that statistic, or None where no pixel qualifies."""
    from astropy.io import fits

    source_model = model_image if light_img is None else model_image - light_img
    arcs = fitted & (source_model > sigma)
    scale_px = max((1.0 if kernel is None else kernel_fwhm(kernel)) / 2.3548, 0.5)
    # the background: no lensed light (a margin of three smoothing scales) and a faint lens galaxy
    background = fitted & ~ndimage.binary_dilation(np.abs(source_model) > 0.1 * sigma,
                                                   iterations=max(1, int(math.ceil(3 * scale_px))))
    if light_img is not None:
        background &= light_img < sigma
    r = np.where(fitted, resid, 0.0)
    try:
        coherence = residual_coherence(r, fitted, scale_px, region=arcs, reference=background)
    except ValueError:  # too little background to calibrate on: the white-noise statistic alone
        try:
            coherence = residual_coherence(r, fitted, scale_px, region=arcs)
        except ValueError:
            coherence = None
    hdr = fits.Header()
    hdr["IMSCALE"] = (scale, "[arcsec] image pixel size")
    hdr["COH_SCL"] = (scale_px, "[pix] smoothing sigma, COH_*")
    if coherence is not None:
        hdr["COH_NPIX"] = (coherence.n_pixels, "arc pixels in COH_*")
        hdr["COH_Z2"] = (coherence.mean_z2, "arcs: mean z^2 (noise: 1)")
        hdr["COH_F3"] = (coherence.fraction_above_3, "arcs: frac |z|>3 (noise 0.0027)")
        hdr["COH_MAX"] = (coherence.max_abs_z, "arcs: max |z|")
        if math.isfinite(coherence.reference_rms):
            hdr["COH_BKG"] = (coherence.reference_rms, "background: rms z (white noise: 1)")
            hdr["COH_Z2R"] = (coherence.mean_z2_relative, "arcs: mean z^2 / COH_BKG^2")
    hdus = [fits.PrimaryHDU(header=hdr), fits.ImageHDU(np.asarray(model_image, np.float32), name="MODEL"),
            fits.ImageHDU(np.asarray(resid, np.float32), name="RESIDUAL"),
            fits.ImageHDU(np.asarray(fitted, np.uint8), name="MASK")]
    if light_img is not None:
        hdus.append(fits.ImageHDU(np.asarray(light_img, np.float32), name="LENS_LIGHT"))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "model.fits") as f:
        fits.HDUList(hdus).writeto(f)
    return coherence


def shifted_extent(source_grid: lensinv.SourceGrid, center: tuple[float, float]) -> tuple[float, ...]:
    """``imshow`` extent (arcsec) of a source grid centred at ``center`` in the source plane."""
    left, right, bottom, top = source_grid.extent
    return (left + center[0], right + center[0], bottom + center[1], top + center[1])


def write_source(out: Path, source: np.ndarray, source_grid: lensinv.SourceGrid, image_scale: float, method: str,
                 fitted: bool, params: dict, extra: dict, center: tuple[float, float] = (0.0, 0.0)) -> None:
    """``out/source.fits`` (float32, atomic): the source with its grid (centred at ``center``, arcsec in
    the source plane, the image's frame), method and lens in the header."""
    from astropy.io import fits

    out.mkdir(parents=True, exist_ok=True)
    hdr = fits.Header()
    hdr["METHOD"] = (method, "reconstruction method")
    hdr["SRC_N"] = (source_grid.n, "source pixels per side")
    hdr["SRC_FOV"] = (source_grid.fov, "[arcsec] source grid side")
    hdr["PIXSCALE"] = (source_grid.delta, "[arcsec] source pixel size")
    hdr["SRC_X0"] = (float(center[0]), "[arcsec] source grid centre x (source plane)")
    hdr["SRC_Y0"] = (float(center[1]), "[arcsec] source grid centre y (source plane)")
    hdr["IMSCALE"] = (image_scale, "[arcsec] image pixel size used")
    hdr["FITTED"] = (fitted, "lens fitted (else given with --lens)")
    for k, key in zip(("THETA_E", "Q", "PHI", "CEN_X", "CEN_Y", "GAMMA", "GAM_PHI"),
                      ("theta_E", "q", "phi", "center_x", "center_y", "gamma", "gamma_phi")):
        hdr[k] = params[key]
    if "slope" in params:
        hdr["SLOPE"] = (params["slope"], "EPL logarithmic slope")
    for k, v in extra.items():
        hdr[k] = v
    hdr["COMMENT"] = ("lensinv source reconstruction; pixel (0,0) at (SRC_X0, SRC_Y0) - ((n-1)/2, (n-1)/2)*PIXSCALE "
                      "arcsec, x along columns (source-plane axes and origin as the lens centre's)")
    with atomic_write(out / "source.fits") as f:
        fits.PrimaryHDU(np.asarray(source, dtype=np.float32), header=hdr).writeto(f)


def brightness_norm(values: np.ndarray, sigma: np.ndarray) -> matplotlib.colors.Normalize:
    """An asinh stretch, linear up to about the noise level and logarithmic above it, for images
    with a bright lens galaxy (a linear scale shows its core alone), from 0 to the 99.9th
    percentile of ``values``."""
    noise = float(np.median(sigma))
    return matplotlib.colors.AsinhNorm(linear_width=max(noise, 1e-300), vmin=min(0.0, float(np.percentile(values, 1))),
                                       vmax=float(np.percentile(values, 99.9)))


def write_posterior(out: Path, post, offset: tuple[float, float], best: dict) -> None:
    """``out/posterior.csv`` (the samples, centres from the image's centre as in fit.json, and
    their log posterior) and ``out/posterior.png`` (their pairs and histograms, the best fit
    marked), both atomic; the sampler's diagnostics on stderr."""
    values = post.samples.copy()
    names = list(post.names)
    for k, d in zip(("center_x", "center_y"), offset):
        values[:, names.index(k)] += d
    buf = io.StringIO()
    buf.write(",".join(names + ["log_posterior"]) + "\n")
    np.savetxt(buf, np.column_stack([values, post.log_posterior]), delimiter=",", fmt="%.8g")
    write_text_atomic(out / "posterior.csv", buf.getvalue())
    shown = [j for j, k in enumerate(names) if np.ptp(values[:, j]) > 0]  # e.g. no shear: gamma is 0
    k = len(shown)
    fig, axes = plt.subplots(k, k, figsize=(1.7 * k + 1, 1.7 * k + 1), squeeze=False)
    for a, i in enumerate(shown):
        for b, j in enumerate(shown):
            ax = axes[a, b]
            if b > a:
                ax.axis("off")
                continue
            if a == b:
                ax.hist(values[:, i], bins=30, color="0.4")
                ax.axvline(best[names[i]], color="C3")
            else:
                ax.plot(values[:, j], values[:, i], ",", color="0.3", alpha=0.5)
                ax.plot(best[names[j]], best[names[i]], "+", color="C3", ms=8)
            ax.tick_params(labelsize=6)
            if a == k - 1:
                ax.set_xlabel(names[j], fontsize=8)
            if b == 0 and a > 0:
                ax.set_ylabel(names[i], fontsize=8)
    fig.suptitle(f"posterior: {post.walkers} walkers x {post.steps} steps ({post.burn} burn-in), "
                 f"acceptance {post.acceptance_fraction:.2f}", fontsize=9)
    fig.tight_layout()
    with atomic_write(out / "posterior.png") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    tau = post.autocorr_steps
    tau_text = f"up to {np.max(tau):.1f} steps" if np.all(np.isfinite(tau)) else "not measurable"
    print(f"posterior: {len(values)} samples (acceptance {post.acceptance_fraction:.2f}, autocorrelation {tau_text}"
          f"{'' if post.converged else ': too short a chain for stable errors'}); wrote posterior.csv and "
          "posterior.png", file=sys.stderr)


def save_figure(path: Path, panels: list) -> None:
    """One row of panels, written atomically as a PNG. A panel is ``(image, extent, title, imshow
    keywords)``, or a callable drawing on its axes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.8))
    for ax, panel in zip(np.atleast_1d(axes), panels):
        if callable(panel):
            panel(ax)
            continue
        img, ext, title, kw = panel
        im = ax.imshow(img, origin="lower", extent=ext, **({"cmap": "magma"} | kw))
        ax.set_title(title)
        ax.set_xlabel("x [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


# -- interferometric data ------------------------------------------------------------------------
#: flags of imaging data that --visibilities does not take
IMAGING_ONLY = ("noise", "sigma", "psf", "psf_fwhm", "mask", "mask_circle", "mask_annulus", "psf_size", "crop",
                "profile", "no_shear", "lens_light", "shard", "posterior_steps")


def main_visibilities(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Check the flags of a ``--visibilities`` reconstruction (before any work), then run it."""
    for flag in IMAGING_ONLY:
        if getattr(args, flag) not in (None, False):
            ap.error(f"argument --{flag.replace('_', '-')}: not used with --visibilities (the noise is the data's "
                     "per-visibility sigma, the array's response is the uv coverage)")
    if args.lens is None:
        ap.error("argument --visibilities: needs --lens (fitting the lens from visibilities is not supported; fit it "
                 "on an image, or give a model from elsewhere)")
    earlier = [name for name in RESULT_FILES if (args.out / name).exists()]
    if earlier and not args.overwrite:
        ap.error(f"argument --out: {args.out} already holds a result ({', '.join(earlier)}); "
                 "pass --overwrite to replace it")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"argument --out: {args.out} exists and is not a folder")
    try:
        args.lens_model = parse_lens(args.lens)
    except ValueError as exc:
        ap.error(f"argument --lens: {exc}")
    try:
        return run_visibilities(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def visibility_chi2(vis: np.ndarray, model: np.ndarray, sigma: np.ndarray) -> float:
    """``sum |V - M|^2 / sigma^2`` over the real and imaginary parts (``2 n_vis`` real data)."""
    r = (np.asarray(vis) - np.asarray(model)) / sigma
    return float(np.sum(r.real**2 + r.imag**2))


def load_visibility_rim(args, grid: lensinv.ImageGrid):
    """The RIM for visibilities: ``--checkpoint`` or the shipped alma weights, checked against the
    sky grid (the model's image grid is fixed by its weights, at 0.04 arcsec) and ``--source-n``."""
    import rim

    path = rim.ALMA_WEIGHTS if args.checkpoint is None else Path(args.checkpoint)
    if args.checkpoint is None and not path.exists():
        raise ValueError(f"--method {args.method}: no RIM weights for visibilities ship with this version "
                         f"({path.name}); train them (train_rim.py --preset alma) and pass --checkpoint, or use "
                         "--method warren-dye")
    net = rim.load_pretrained(path)
    c = net.config
    if grid.n != c.image_n or not math.isclose(grid.pixel_scale, 0.04, rel_tol=1e-6):
        raise ValueError(f"--image-n {grid.n} / --pixel-scale {grid.pixel_scale:g} do not fit the RIM, whose sky grid "
                         f"is {c.image_n} x 0.04 arcsec; omit them or use --method warren-dye")
    if args.source_n is not None and args.source_n != c.source_n:
        raise ValueError(f"--source-n {args.source_n} does not fit the RIM, whose source grid is {c.source_n} "
                         "pixels per side; omit --source-n or use --method warren-dye")
    return net


def run_visibilities(args) -> int:
    """Reconstruct the source from visibilities with the given lens; writes the imaging outputs.

    ``fit.json``'s ``chi2_per_pixel`` is the chi^2 per real datum (``2 n_vis`` of them: real and
    imaginary parts) and ``n_pixels`` that number, plus ``n_visibilities``. The figures show the
    natural-weighted dirty images of the data, the model and the residual (the last in units of its
    noise, ``1 / sqrt(sum w)``), the model sky ``pb L s`` and the normalised residual visibilities
    against baseline length.
    """
    import json

    import baselines
    from lensinv import uv as luv
    from lensinv.visibility import ARCSEC

    data = luv.read_visibilities(args.visibilities)
    grid = lensinv.ImageGrid(192 if args.image_n is None else args.image_n,
                             0.04 if args.pixel_scale is None else args.pixel_scale)
    pb = None
    if args.dish_diameter is not None:
        if data.frequency is None:
            raise ValueError(f"--dish-diameter: {args.visibilities} records no frequency, so the primary beam's "
                             "width is unknown")
        pb = luv.gaussian_primary_beam(grid, data.frequency, args.dish_diameter)
    nyquist = 0.5 / (grid.pixel_scale * ARCSEC)
    umax = float(np.abs(data.uv).max())
    if umax > nyquist:
        raise ValueError(f"--pixel-scale {grid.pixel_scale:g} arcsec does not sample the longest baseline "
                         f"({umax:.4g} wavelengths > {nyquist:.4g}): the model would alias; use pixels below "
                         f"{0.5 / umax / ARCSEC:.4g} arcsec")
    lens = args.lens_model
    net = load_visibility_rim(args, grid) if args.method in ("rim", "rim+wd") else None
    source_n = net.config.source_n if net is not None else 64 if args.source_n is None else args.source_n
    source_grid = lensinv.SourceGrid(source_n, 1.5 if args.source_fov is None else args.source_fov)
    op = lensinv.visibility_operator(lens, data.coverage, grid, source_grid, primary_beam=pb)
    log_ev, extra = math.nan, {}
    if net is not None:
        source = net.reconstruct(op, data.vis, data.sigma, transforms=args.rim_transforms)
        extra.update({"CKPT": str(args.checkpoint or "shipped (alma)"), "RIMTRF": args.rim_transforms})
    if args.method == "warren-dye":
        res = baselines.invert(op, data.vis, data.sigma, regularization=args.regularization)
    elif args.method == "rim+wd":  # the RIM estimate as the prior mean, form chosen by evidence
        res = baselines.invert_by_evidence(op, data.vis, data.sigma, forms=("gradient", "curvature"),
                                           prior_mean=source, select=args.rim_wd_select)
    if args.method != "rim":
        source, log_ev = res.source, float(res.log_evidence)
        extra.update({"REGUL": res.regularization, "LAMBDA": res.lam, "LOGEV": res.log_evidence})
    model = op.apply(source)
    n_real = 2 * data.n_vis
    chi2 = visibility_chi2(data.vis, model, data.sigma)
    extra["CHI2N"] = chi2 / n_real
    result = {"lens": lens_params(lens), "lens_std": None, "chi2_per_pixel": chi2 / n_real, "n_pixels": n_real,
              "n_visibilities": data.n_vis, "log_evidence": _finite_or_none(log_ev), "method": args.method,
              "data": "visibilities"}
    write_source(args.out, source, source_grid, grid.pixel_scale, args.method, False, result["lens"], extra)
    write_text_atomic(args.out / "fit.json", json.dumps(result, indent=2) + "\n")

    w = data.weights
    dirty = op.dirty_image(data.vis, w)
    dirty_model = op.dirty_image(model, w)
    dirty_noise = 1.0 / math.sqrt(float(w.sum()))  # std of a dirty-image pixel from the noise alone
    sky = op.image(source).reshape(grid.shape)
    resid = (data.vis - model) / data.sigma

    def residual_visibilities(ax) -> None:
        q = np.hypot(data.uv[:, 0], data.uv[:, 1]) / 1e3
        pick = np.random.default_rng(0).permutation(data.n_vis)[:20000]
        ax.plot(q[pick], resid.real[pick], ",", color="C0", alpha=0.4, label="real")
        ax.plot(q[pick], resid.imag[pick], ",", color="C1", alpha=0.4, label="imaginary")
        edges = np.quantile(q, np.linspace(0, 1, 16))
        k = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, 14)
        mid = 0.5 * (edges[1:] + edges[:-1])
        for part, colour in ((resid.real, "navy"), (resid.imag, "darkred")):
            ax.plot(mid, [np.mean(part[k == b]) for b in range(15)], "-", color=colour, lw=1.5)
        ax.set_ylim(-5, 5)
        ax.set_xlabel("baseline [kilo-wavelengths]")
        ax.set_title(f"residual / sigma (chi2/N {chi2 / n_real:.3f})")

    save_figure(args.out / "fit.png", [
        (dirty, grid.extent, "dirty image (data) [Jy/beam]", {}),
        (dirty_model, grid.extent, "dirty image (model) [Jy/beam]", {}),
        ((dirty - dirty_model) / dirty_noise, grid.extent, "residual dirty image / noise",
         {"cmap": "RdBu_r", "vmin": -5, "vmax": 5}),
        (sky, grid.extent, "model sky [Jy/pixel]", {}),
        (source, source_grid.extent, f"source ({args.method}) [Jy/pixel]", {}),
        residual_visibilities])
    save_figure(args.out / "reconstruction.png", [
        (dirty, grid.extent, "dirty image [Jy/beam]", {}),
        (source, source_grid.extent, f"source ({args.method}) [Jy/pixel]", {}),
        residual_visibilities])
    print(f"wrote {args.out / 'source.fits'}, fit.json, fit.png and reconstruction.png (chi2/N {chi2 / n_real:.3f} "
          f"over {data.n_vis} visibilities)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
