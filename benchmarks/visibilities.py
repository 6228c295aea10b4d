#!/usr/bin/env python
"""Time the evidence-optimised Warren-Dye inversion of interferometric visibilities.

    python benchmarks/visibilities.py [--lenses 3] [--n-vis 1e6] [--big 1e7] [--seed 1]

Simulated ALMA-like data (lensinv.uv: the documented 43-antenna "extended" layout, ~2.5 km
longest baseline, declination -30, hour angles -2..2 h, 4 channels at 224-236 GHz, thermal
noise): 192x192 image grid (0.04"), 64x64 source grid (1.5"), supersampling 4.

Prints, in one run:

1. the one-off precomputation per uv coverage and weights: the natural-weighted dirty beam
   (one finufft type-1 of the weights onto the 383^2 pixel separations);
2. per lens, the evidence-optimised inversion of ``n_vis`` visibilities (beam cached) and the
   imaging inversion of the same lens, grids and a 0.08" Gaussian PSF (benchmarks/inversion.py's
   target case), interleaved, with the median ratio (target <= 3);
3. the direct-DFT route it avoids: forming ``M = A L`` and ``Re(M^H W M)`` for a subset of
   visibilities, timed and extrapolated linearly to ``n_vis``; and one NUFFT apply vs a DFT apply;
4. ``--big`` visibilities: the beam's time (target <= 60 s), a NUFFT apply and adjoint, one full
   inversion, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as benchmarks/inversion.py

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import baselines  # noqa: E402
import lensinv  # noqa: E402
from lensinv import uv as luv  # noqa: E402
from lensinv.simulate import ObservationPreset, SimulationConfig, simulate  # noqa: E402
from lensinv.visibility import ARCSEC, UVCoverage  # noqa: E402

FREQS = np.array([224e9, 228e9, 232e9, 236e9])
BANDWIDTH = 1.875e9  # Hz per channel (7.5 GHz over 4)
HOURS = (-2.0, 2.0)


def coverage(n_vis: float, layout: luv.ArrayLayout, n_chan: int = 4) -> luv.SimulatedCoverage:
    """ALMA-like Earth-rotation coverage of about ``n_vis`` visibilities (integration time chosen)."""
    n_bl = layout.n_antennas * (layout.n_antennas - 1) // 2
    freqs = np.linspace(FREQS[0], FREQS[-1], n_chan)
    n_t = max(1, round(n_vis / (n_bl * n_chan)))
    t_int = (HOURS[1] - HOURS[0]) * 3600.0 / n_t * luv.SIDEREAL_DAY / 86400.0
    return luv.simulate_coverage(layout, declination=-30.0, hour_angle=HOURS, integration_time=t_int,
                                 frequencies=freqs, min_elevation=15.0)


def weights_as_invert(sigma: np.ndarray) -> np.ndarray:
    """The weights baselines.invert hands to normal_matrix (sigma in units of a power of two)."""
    unit = math.ldexp(1.0, int(round(math.log2(float(np.median(sigma))))))
    return (unit / sigma) ** 2


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def dft_extrapolation(op, sigma: np.ndarray, n_sub: int) -> tuple[float, float, float]:
    """Seconds to form ``M = A diag(pb) L`` for ``n_sub`` visibilities and ``Re(M^H W M)`` from it
    (a real SYRK of the stacked real and imaginary parts), and one DFT apply of ``n_sub``."""
    L = op.L
    rows = np.flatnonzero(np.diff(L.indptr))
    cols = np.flatnonzero(np.bincount(L.indices, minlength=L.shape[1]))
    LR = L[rows][:, cols].tocsc()
    x, y = op.image_grid.coordinates()
    x, y = x.ravel()[rows] * ARCSEC, y.ravel()[rows] * ARCSEC
    uv = op.uv[:n_sub]
    t0 = time.perf_counter()
    A = np.exp(-2j * np.pi * (uv[:, :1] * x + uv[:, 1:] * y))  # n_sub x reached pixels
    M = (LR.T @ A.T).T  # n_sub x unknowns, complex
    t_form = time.perf_counter() - t0
    sw = 1.0 / sigma[:n_sub]
    Mr = np.asfortranarray(np.concatenate([M.real * sw[:, None], M.imag * sw[:, None]]))
    t0 = time.perf_counter()
    scipy.linalg.blas.dsyrk(1.0, Mr, trans=1, lower=0)
    t_syrk = time.perf_counter() - t0
    img = np.random.default_rng(0).normal(size=rows.size)
    t0 = time.perf_counter()
    _ = np.exp(-2j * np.pi * (uv[:, :1] * x + uv[:, 1:] * y)) @ img
    t_apply = time.perf_counter() - t0
    return t_form, t_syrk, t_apply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lenses", type=int, default=3)
    ap.add_argument("--n-vis", type=float, default=1e6)
    ap.add_argument("--big", type=float, default=1e7, help="visibilities of the memory/precomputation check (0: skip)")
    ap.add_argument("--dft-subset", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flux", type=float, default=0.02, help="total lensed flux (Jy)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    layout = luv.alma_layout("extended")
    cov = coverage(args.n_vis, layout)
    sigma = luv.thermal_sigma(layout, cov.integration_time, BANDWIDTH)
    print(f"coverage: {layout.name}, {layout.n_antennas} antennas, longest baseline {layout.max_baseline:.0f} m; "
          f"{cov.n_vis} visibilities ({cov.integration_time:.1f} s integrations, {FREQS.size} channels); "
          f"|uv|max {np.abs(cov.uv).max():.3g} wavelengths; thermal sigma {sigma * 1e3:.2f} mJy per part")
    preset = ObservationPreset(name="psf0.08", psf_fwhm=(0.08, 0.08), psf_size=9, snr=(10.0, 200.0))
    sims = [simulate(i, args.seed, SimulationConfig(preset=preset)) for i in range(args.lenses)]
    ops, data = [], []
    for sim in sims:
        _ = sim.op.matrix  # imaging: the operator is an input, F L formed before timing
        op = lensinv.visibility_operator(sim.lens, cov.coverage, preset.image_grid, preset.source_grid,
                                         supersample=preset.supersample)
        s_jy = sim.source * args.flux / float(op.image(sim.source).sum())
        sig = np.full(cov.n_vis, sigma)
        data.append((s_jy, luv.simulate_visibilities(op, s_jy, sig, rng)))
        ops.append(op)
    # 1. the precomputation (fresh coverage object: nothing cached)
    w = weights_as_invert(data[0][1].sigma)
    fresh = UVCoverage(cov.uv)
    t0 = time.perf_counter()
    fresh.beam(w, preset.image_grid)
    t_beam = time.perf_counter() - t0
    print(f"precomputation: dirty beam of {cov.n_vis} visibilities on 383^2 separations {t_beam:.2f} s (one-off per "
          f"coverage and weights)")
    # compile and cache: one inversion each
    baselines.invert(sims[0].op, sims[0].image, sims[0].sigma, lam=1.0)
    baselines.invert(ops[0], data[0][1].vis, data[0][1].sigma, lam=1.0)
    # 2. interleaved timing
    t_img, t_vis, stages, rmse, chi2n, nunk, ev_img, ev_vis = [], [], {}, [], [], [], [], []
    for sim, op, (s_jy, d) in zip(sims, ops, data):
        t0 = time.perf_counter()
        ri = baselines.invert(sim.op, sim.image, sim.sigma)
        t_img.append(time.perf_counter() - t0)
        ev_img.append(ri.evaluations)
        t0 = time.perf_counter()
        res = baselines.invert(op, d.vis, d.sigma)
        t_vis.append(time.perf_counter() - t0)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        rmse.append(float(np.sqrt(np.mean((res.source - s_jy) ** 2)) / s_jy.max()))
        chi2n.append(res.chi2 / res.n_data)
        nunk.append(res.n_unknowns)
        ev_vis.append(res.evaluations)
    ti, tv = statistics.median(t_img), statistics.median(t_vis)
    where = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in stages.items() if k != "total")
    print(f"imaging, PSF 0.08\": evidence-optimised {ti:.2f} s (median of {len(t_img)}; "
          f"{', '.join(f'{t:.2f}' for t in t_img)}; factorisations {ev_img})")
    print(f"visibilities ({cov.n_vis}): evidence-optimised {tv:.2f} s ({', '.join(f'{t:.2f}' for t in t_vis)}); "
          f"ratio to imaging {tv / ti:.2f} (target <= 3); {statistics.median(nunk):.0f} unknowns; "
          f"chi2/N {statistics.median(chi2n):.3f}; RMSE/peak {statistics.median(rmse):.3f}; factorisations {ev_vis}")
    print(f"{'':21s} median s per stage: {where}")
    op0 = ops[0]
    t0 = time.perf_counter()
    op0.apply(data[0][0])
    t_nufft = time.perf_counter() - t0
    t0 = time.perf_counter()
    op0.adjoint(data[0][1].vis)
    t_nufft_adj = time.perf_counter() - t0
    t0 = time.perf_counter()
    op0.normal_matrix(w)
    t_nm = time.perf_counter() - t0
    print(f"lens 0: normal matrix L^T B L alone (beam cached) {t_nm:.2f} s; NUFFT apply {t_nufft:.2f} s, "
          f"adjoint {t_nufft_adj:.2f} s")
    # 3. the direct DFT it avoids
    n_sub = min(args.dft_subset, cov.n_vis)
    t_form, t_syrk, t_apply = dft_extrapolation(op0, data[0][1].sigma, n_sub)
    f = cov.n_vis / n_sub
    print(f"direct DFT (timed on {n_sub} visibilities, x{f:.0f}): forming M {t_form * f:.0f} s + Re(M^H W M) "
          f"{t_syrk * f:.0f} s = {(t_form + t_syrk) * f:.0f} s per lens (vs the beam route's normal matrix "
          f"{statistics.median(stages['normal_matrix']):.2f} s); one DFT apply {t_apply * f:.1f} s vs NUFFT "
          f"{t_nufft:.2f} s")
    print(f"peak memory so far {rss_gib():.2f} GiB")
    # 4. 10^7
    if args.big > 0:
        del data, ops
        big = coverage(args.big, layout, n_chan=int(round(4 * args.big / args.n_vis)))
        sig_big = np.full(big.n_vis, luv.thermal_sigma(layout, big.integration_time, BANDWIDTH / 10))
        opb = lensinv.visibility_operator(sims[0].lens, big.coverage, preset.image_grid, preset.source_grid,
                                          supersample=preset.supersample)
        s_jy = sims[0].source * args.flux / float(opb.image(sims[0].source).sum())
        t0 = time.perf_counter()
        db = luv.simulate_visibilities(opb, s_jy, sig_big, rng)
        t_app = time.perf_counter() - t0
        t0 = time.perf_counter()
        opb.adjoint(db.vis)
        t_adj = time.perf_counter() - t0
        t0 = time.perf_counter()
        big.coverage.beam(weights_as_invert(sig_big), preset.image_grid)
        t_bb = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = baselines.invert(opb, db.vis, db.sigma)
        t_inv = time.perf_counter() - t0
        print(f"{big.n_vis} visibilities: beam {t_bb:.2f} s (target <= 60 s); simulate (NUFFT apply + noise) "
              f"{t_app:.2f} s; adjoint {t_adj:.2f} s; evidence-optimised inversion (beam cached) {t_inv:.2f} s, "
              f"chi2/N {res.chi2 / res.n_data:.3f}; peak memory {rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
