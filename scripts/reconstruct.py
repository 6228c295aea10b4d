#!/usr/bin/env python
"""Reconstruct the source of an observed lens (FITS) with the RIM or a Warren-Dye inversion.

    python scripts/reconstruct.py --image obs.fits --lens "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2" \\
        --sigma 0.02 --psf-fwhm 0.08 --method warren-dye --out results/obs1

The image's pixel scale comes from its FITS header (celestial WCS, or a PIXSCALE keyword in
arcsec) or --pixel-scale. The lens is centred at (center_x, center_y) arcsec from the centre
of the image. For the RIM the image (and noise map, PSF) are resampled onto the model's grid
(192 x 0.04 arcsec) when they differ; Warren-Dye works on the largest centred square cut-out at
the native scale. Writes OUT/source.fits (header: method, grid, lens) and OUT/reconstruction.png.
It never overwrites an earlier result (a folder holding source.fits or fit.json) without
--overwrite; that is checked, like every flag, before any work.

For the RIM, --source-n (and the image) must fit the model: its source grid is fixed by its
weights, and an image covering less than half of the model's field in either direction, or with
fewer than 16 pixels on a side, is refused rather than zero-padded into an invented observation.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import lensinv  # noqa: E402
from baselines import FORMS  # noqa: E402
from lensinv.io import atomic_write, read_fits_image  # noqa: E402

LENS_KEYS = ("theta_E", "q", "phi", "gamma", "gamma_phi", "center_x", "center_y")
#: the files of a result: an --out folder holding one of them is not overwritten without --overwrite
RESULT_FILES = ("source.fits", "fit.json", "reconstruction.png")
#: the RIM refuses images covering less than this fraction of its field per side, or with fewer pixels
RIM_MIN_COVERAGE = 0.5
RIM_MIN_PIXELS = 16


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def int_at_least_2(text: str) -> int:
    """argparse type: an integer >= 2."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {v}")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, required=True, help="observed image (FITS)")
    ap.add_argument("--lens", required=True, help='e.g. "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2"')
    noise = ap.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise", type=Path, help="noise (sigma) map, FITS, same pixels as the image")
    noise.add_argument("--sigma", type=positive_float, help="uniform noise sigma (image units)")
    psf = ap.add_mutually_exclusive_group()
    psf.add_argument("--psf", type=Path, help="PSF kernel (FITS) at the image's pixel scale")
    psf.add_argument("--psf-fwhm", type=positive_float, help="Gaussian PSF FWHM in arcsec (> 0)")
    ap.add_argument("--method", choices=["rim", "warren-dye", "rim+wd"], default="rim",
                    help="rim+wd: the RIM estimate as the prior mean of an evidence-optimised Warren-Dye inversion "
                         "(gradient or curvature, whichever has the higher evidence)")
    ap.add_argument("--regularization", choices=FORMS, default="gradient", help="for warren-dye")
    ap.add_argument("--checkpoint", default=None, help="RIM weights (default: shipped)")
    ap.add_argument("--pixel-scale", type=positive_float, default=None,
                    help="arcsec/pixel (> 0); default: from the FITS header")
    ap.add_argument("--source-n", type=int_at_least_2, default=None,
                    help="source pixels per side (default 64; for the RIM, the model's)")
    ap.add_argument("--source-fov", type=positive_float, default=1.5, help="arcsec")
    ap.add_argument("--out", type=Path, required=True, help="result folder (created)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"argument --out: {args.out} exists and is not a folder")
    earlier = [name for name in RESULT_FILES if (args.out / name).exists()]
    if earlier and not args.overwrite:
        ap.error(f"argument --out: {args.out} already holds a result ({', '.join(earlier)}); "
                 "pass --overwrite to replace it")
    try:
        return run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from astropy.io import fits

    lens = parse_lens(args.lens)
    fi = read_fits_image(args.image, name="--image")
    image, header = fi.data, fi.header
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{args.image} contains NaN or inf pixels")
    scale = args.pixel_scale if args.pixel_scale is not None else pixel_scale_from_header(header)
    if scale is None:
        raise ValueError("no pixel scale: the FITS header has no celestial WCS or PIXSCALE; pass --pixel-scale")
    if args.noise is not None:
        sigma = read_fits_image(args.noise, name="--noise").data
        if sigma.shape != image.shape:
            raise ValueError(f"noise map shape {sigma.shape} differs from the image's {image.shape}")
    else:
        sigma = np.full(image.shape, args.sigma)
    kernel = None
    if args.psf is not None:
        kernel = lensinv.validate_kernel(read_fits_image(args.psf, name="--psf").data)

    if args.method in ("rim", "rim+wd"):
        import rim

        model = rim.load_pretrained(args.checkpoint)
        grid = lensinv.ImageGrid(model.config.image_n, 0.04)
        if args.source_n is not None and args.source_n != model.config.source_n:
            raise ValueError(f"--source-n {args.source_n} does not fit the RIM, whose source grid is "
                             f"{model.config.source_n} pixels per side; omit --source-n or use --method warren-dye")
        source_grid = lensinv.SourceGrid(model.config.source_n, args.source_fov)
        check_rim_coverage(image.shape, scale, grid)
        same = image.shape == grid.shape and math.isclose(scale, grid.pixel_scale, rel_tol=1e-6)
        if not same:  # resample surface brightness (and the noise map, as an approximation) onto the model grid
            image = resample(image, scale, grid)
            sigma = np.maximum(resample(sigma, scale, grid), np.min(sigma[sigma > 0]))
            if kernel is not None:
                kernel = lensinv.validate_kernel(ndimage.zoom(kernel, scale / grid.pixel_scale, order=1))
                if kernel.shape[0] % 2 == 0:
                    kernel = lensinv.validate_kernel(np.pad(kernel, ((0, 1), (0, 1))))
        if args.psf_fwhm:
            kernel = lensinv.gaussian_psf(args.psf_fwhm, grid.pixel_scale)
        op = lensinv.operator(lens, grid, source_grid, psf=kernel)
        sig = float(np.median(sigma)) if np.allclose(sigma, sigma.flat[0]) else sigma
        source = model.reconstruct(op, image, sig)
        extra = {"CKPT": str(args.checkpoint or "shipped")}
        if args.method == "rim+wd":
            import baselines

            res = baselines.invert_by_evidence(op, image, sigma, forms=("gradient", "curvature"), prior_mean=source,
                                               mask=baselines.arc_mask(image, sigma))
            source = res.source
            extra.update({"REGUL": res.regularization, "LAMBDA": res.lam, "LOGEV": res.log_evidence,
                          "CHI2N": res.reduced_chi2})
    else:
        import baselines

        source_grid = lensinv.SourceGrid(64 if args.source_n is None else args.source_n, args.source_fov)
        image, sigma = centred_square(image), centred_square(sigma)
        grid = lensinv.ImageGrid(image.shape[0], scale)
        if args.psf_fwhm:
            kernel = lensinv.gaussian_psf(args.psf_fwhm, scale)
        op = lensinv.operator(lens, grid, source_grid, psf=kernel)
        res = baselines.invert(op, image, sigma, regularization=args.regularization,
                               mask=baselines.arc_mask(image, sigma))
        source = res.source
        extra = {"REGUL": args.regularization, "LAMBDA": res.lam, "LOGEV": res.log_evidence, "CHI2N": res.reduced_chi2}

    args.out.mkdir(parents=True, exist_ok=True)
    hdr = fits.Header()
    hdr["METHOD"] = (args.method, "reconstruction method")
    hdr["SRC_N"] = (source_grid.n, "source pixels per side")
    hdr["SRC_FOV"] = (source_grid.fov, "[arcsec] source grid side")
    hdr["PIXSCALE"] = (source_grid.delta, "[arcsec] source pixel size")
    hdr["IMSCALE"] = (grid.pixel_scale, "[arcsec] image pixel size used")
    for k, v in zip(("THETA_E", "Q", "PHI", "CEN_X", "CEN_Y"), (lens.components[0].theta_E, lens.components[0].q,
                                                              lens.components[0].phi, *lens.components[0].center)):
        hdr[k] = v
    hdr["GAMMA"], hdr["GAM_PHI"] = lens.components[1].gamma, lens.components[1].phi
    for k, v in extra.items():
        hdr[k] = v
    hdr["COMMENT"] = "lensinv source reconstruction; pixel (0,0) at (-(n-1)/2, -(n-1)/2)*PIXSCALE arcsec"
    with atomic_write(args.out / "source.fits") as f:
        fits.PrimaryHDU(source.astype(np.float32), header=hdr).writeto(f)

    model_image = op.apply(source)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    resid = (image - model_image) / sigma
    for ax, (img, ext, title, kw) in zip(axes, [
            (image, grid.extent, "observed", {}), (source, source_grid.extent, f"source ({args.method})", {}),
            (model_image, grid.extent, "model image", {}),
            (resid, grid.extent, "normalised residual", {"cmap": "RdBu_r", "vmin": -5, "vmax": 5})]):
        im = ax.imshow(img, origin="lower", extent=ext, **({"cmap": "magma"} | kw))
        ax.set_title(title)
        ax.set_xlabel("x [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_write(args.out / "reconstruction.png") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    print(f"wrote {args.out / 'source.fits'} and reconstruction.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
