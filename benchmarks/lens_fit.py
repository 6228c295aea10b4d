#!/usr/bin/env python
"""Speed of the lens-model fit (baselines.lens_fit): evidence evaluations per second at the coarse
and full source grids, and the wall time of a full fit (lens unknown, no starting guess) of a
simulated HST-like cut-out, optionally with the lens light modelled jointly.

    python benchmarks/lens_fit.py [--n 100] [--pixel-scale 0.05] [--source-n 32] [--lens-light]

Prints the measured numbers and the recovered lens against the truth. One BLAS and one Numba
thread by default (FitConfig); the shared 2-core machine is the reference (issue 14 asks for a
full fit of an HST-size cut-out in <= 10 minutes there).
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
from scipy.signal import fftconvolve  # noqa: E402

import lensinv  # noqa: E402
from baselines import lens_fit as lf  # noqa: E402
from baselines.regularization import get_regularization  # noqa: E402


def simulate(n: int, pixel: float, light: bool, seed: int = 0):
    ig = lensinv.ImageGrid(n=n, pixel_scale=pixel)
    psf = lensinv.gaussian_psf(0.1, pixel)
    truth = lensinv.Lens(lensinv.SIE(theta_E=1.2, q=0.7, phi=0.5, center=(0.04, -0.06)),
                         lensinv.ExternalShear(gamma=0.05, phi=1.2))
    sg = lensinv.SourceGrid(n=80, fov=2.0)
    x, y = sg.coordinates()
    src = (np.exp(-0.5 * ((x - 0.1) ** 2 + (y - 0.05) ** 2 / 0.6) / 0.1**2)
           + 0.6 * np.exp(-0.5 * ((x + 0.08) ** 2 + (y + 0.12) ** 2) / 0.05**2))
    clean = lensinv.operator(truth, ig, sg, psf=psf).apply(src)
    sigma = float(clean.max()) / 40
    if light:
        gx, gy = ig.coordinates()
        r = np.hypot((gx - 0.04) / math.sqrt(1 / 0.8), (gy + 0.06) * math.sqrt(1 / 0.8))
        clean = clean + fftconvolve(0.5 * clean.max() * np.exp(-3.67 * (np.sqrt(r / 0.7) - 1)), psf, mode="same")
    image = clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape)
    return ig, psf, truth, image, sigma


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--pixel-scale", type=float, default=0.05)
    ap.add_argument("--source-n", type=int, default=32)
    ap.add_argument("--lens-light", action="store_true")
    ap.add_argument("--lam-mode", choices=("optimise", "fixed"), default=lf.FitConfig().lam_mode)
    args = ap.parse_args()

    ig, psf, truth, image, sigma = simulate(args.n, args.pixel_scale, args.lens_light)
    cfg = lf.FitConfig(source_n=args.source_n, lam_mode=args.lam_mode)
    light = lf.MGELight() if args.lens_light else None

    # evaluations per second at the true lens's neighbourhood
    with lf._threads(cfg.blas_threads, cfg.numba_threads):
        prob = lf._Problem(image.reshape(-1), np.full(ig.size, sigma), np.ones(ig.size, bool), ig, psf,
                           get_regularization("gradient"), lf._Space(True, False), light, 0.8, 0.0,
                           100 * float(image.max()), None)
        space = lf._Space(True, False)
        e = (1 - 0.7) / 1.7
        x0 = np.array([1.2, e * math.cos(1.0), e * math.sin(1.0), 0.04, -0.06, 0.05 * math.cos(2.4),
                       0.05 * math.sin(2.4)])
        rng = np.random.default_rng(1)
        for name, grid_n, ss in (("coarse", cfg.coarse_source_n, cfg.coarse_supersample),
                                 ("full", args.source_n, cfg.supersample)):
            for lam in (None, "fixed"):
                stage = lf._Stage(name, space, lensinv.SourceGrid(n=grid_n, fov=1.4), ss)
                if lam == "fixed":
                    stage = lf._stage_lam(prob, stage, x0, "fixed")
                prob.log_evidence(x0, stage)  # compile / warm
                t = time.perf_counter()
                k = 20
                for _ in range(k):
                    prob.log_evidence(x0 + rng.normal(0, 0.002, x0.size), stage)
                dt = (time.perf_counter() - t) / k
                print(f"evidence evaluation, {name} grid {grid_n}x{grid_n}, supersample {ss}, "
                      f"lam {'per evaluation' if lam is None else 'fixed'}: {1e3 * dt:.1f} ms ({1 / dt:.1f}/s)")

    t = time.perf_counter()
    fit = lf.fit_lens(image, sigma, ig, psf, lens_light=light, config=cfg)
    wall = time.perf_counter() - t
    print(f"full fit of a {args.n}x{args.n} cut-out ({'with' if light else 'without'} lens light, "
          f"source {args.source_n}x{args.source_n}, lam {args.lam_mode}): {wall:.1f} s, "
          f"{sum(fit.evaluations.values())} evaluations {fit.evaluations}")
    print("  stages (s):", {k: round(v, 1) for k, v in fit.timings.items()})
    tp = {**truth.components[0].params(), "gamma": truth.components[1].gamma, "gamma_phi": truth.components[1].phi}
    for k in ("theta_E", "q", "phi", "center_x", "center_y", "gamma", "gamma_phi"):
        print(f"  {k:10s} fit {fit.params[k]:+.4f} +- {fit.params_std[k]:.4f}   true {tp[k]:+.4f}")
    print(f"  chi2/N {fit.chi2_per_pixel:.3f} over {fit.n_pixels} pixels, log evidence {fit.log_evidence:.1f}")


if __name__ == "__main__":
    main()
