#!/usr/bin/env python
"""Reconstruct the source of an observed lens (FITS) with the RIM or a Warren-Dye inversion.

    python scripts/reconstruct.py --image obs.fits --lens "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2" \\
        --sigma 0.02 --psf-fwhm 0.08 --method warren-dye --out results/obs1

The image's pixel scale comes from its FITS header (celestial WCS, or a PIXSCALE keyword in
arcsec) or --pixel-scale. The lens is centred at (center_x, center_y) arcsec from the centre
of the image. For the RIM the image (and noise map, PSF) are resampled onto the model's grid
(192 x 0.04 arcsec) when they differ; Warren-Dye works on the largest centred square cut-out at
the native scale. Writes OUT/source.fits (header: method, grid, lens) and OUT/reconstruction.png.
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
from lensinv.io import read_fits_image  # noqa: E402

LENS_KEYS = ("theta_E", "q", "phi", "gamma", "gamma_phi", "center_x", "center_y")


def parse_lens(text: str) -> lensinv.Lens:
    """``"theta_E=...,q=...,phi=...,gamma=...,gamma_phi=...,center_x=...,center_y=..."`` (arcsec, radians)."""
    values = {"q": 1.0, "phi": 0.0, "gamma": 0.0, "gamma_phi": 0.0, "center_x": 0.0, "center_y": 0.0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"--lens entries must be key=value, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in LENS_KEYS:
            raise ValueError(f"unknown lens parameter {k!r}; use {', '.join(LENS_KEYS)}")
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
        return float(header["PIXSCALE"])
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, required=True, help="observed image (FITS)")
    ap.add_argument("--lens", required=True, help='e.g. "theta_E=1.1,q=0.8,phi=0.4,gamma=0.03,gamma_phi=1.2"')
    noise = ap.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise", type=Path, help="noise (sigma) map, FITS, same pixels as the image")
    noise.add_argument("--sigma", type=float, help="uniform noise sigma (image units)")
    psf = ap.add_mutually_exclusive_group()
    psf.add_argument("--psf", type=Path, help="PSF kernel (FITS) at the image's pixel scale")
    psf.add_argument("--psf-fwhm", type=float, help="Gaussian PSF FWHM in arcsec")
    ap.add_argument("--method", choices=["rim", "warren-dye"], default="rim")
    ap.add_argument("--regularization", default="gradient", help="for warren-dye")
    ap.add_argument("--checkpoint", default=None, help="RIM weights (default: shipped)")
    ap.add_argument("--pixel-scale", type=float, default=None, help="arcsec/pixel when the header has none")
    ap.add_argument("--source-n", type=int, default=64)
    ap.add_argument("--source-fov", type=float, default=1.5, help="arcsec")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
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
    scale = args.pixel_scale or pixel_scale_from_header(header)
    if scale is None or not scale > 0:
        raise ValueError("no pixel scale: the FITS header has no celestial WCS or PIXSCALE; pass --pixel-scale")
    if args.noise is not None:
        sigma = read_fits_image(args.noise, name="--noise").data
        if sigma.shape != image.shape:
            raise ValueError(f"noise map shape {sigma.shape} differs from the image's {image.shape}")
    else:
        if not (args.sigma > 0 and math.isfinite(args.sigma)):
            raise ValueError(f"--sigma must be > 0, got {args.sigma}")
        sigma = np.full(image.shape, args.sigma)
    kernel = None
    if args.psf is not None:
        kernel = lensinv.validate_kernel(read_fits_image(args.psf, name="--psf").data)
    source_grid = lensinv.SourceGrid(args.source_n, args.source_fov)

    if args.method == "rim":
        import rim

        model = rim.load_pretrained(args.checkpoint)
        grid = lensinv.ImageGrid(model.config.image_n, 0.04)
        if model.config.source_n != source_grid.n:
            source_grid = lensinv.SourceGrid(model.config.source_n, args.source_fov)
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
    else:
        import baselines

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
    fits.PrimaryHDU(source.astype(np.float32), header=hdr).writeto(args.out / "source.fits", overwrite=True)

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
    fig.savefig(args.out / "reconstruction.png", dpi=90)
    plt.close(fig)
    print(f"wrote {args.out / 'source.fits'} and reconstruction.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
