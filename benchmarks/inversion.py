#!/usr/bin/env python
"""Time the evidence-optimised Warren-Dye inversion and report its reconstruction error.

    python benchmarks/inversion.py [--lenses 8] [--seed 1] [--check-optimum]

Part 1 (the speed target): 192x192 image, 64x64 source, 0.08 arcsec Gaussian PSF, S/N 10-200,
with all pixels and with a data-driven arc mask (baselines.arc_mask). Part 2: lenses of the
default `realistic` preset (PSF 0.05-0.15 arcsec), with arc masks: time and RMSE per
regularization. Prints medians, where the time goes, and each median as a multiple of a peer timed
in the same run (one LAPACK float64 Cholesky factorisation of 4096 unknowns). ``--check-optimum`` also maximises each
lens's evidence by a bounded scalar search over fixed-lam inversions (to 0.002 dex) and prints how
far the evidence search's lam is from it and the log evidence it leaves (slow: ~15 solves a lens).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

# Before NumPy loads OpenBLAS: let its idle threads sleep at once instead of spinning for ~0.1 s
# after each call, which takes a core from the Numba kernel of the next inversion on 2 cores
# (see the README's timing notes). An explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
import scipy.linalg.lapack  # noqa: E402
import scipy.optimize  # noqa: E402

import baselines  # noqa: E402
from lensinv.simulate import PRESETS, ObservationPreset, SimulationConfig, simulate  # noqa: E402


def _check_optimum(sim, form: str, m, res) -> tuple[float, float]:
    """(|log10 lam - log10 lam*|, log P(lam*) - log P(lam)) against a bounded scalar maximisation."""
    x0 = np.log10(res.lam)

    def neg(x):
        return -baselines.invert(sim.op, sim.image, sim.sigma, regularization=form, mask=m, lam=10**x).log_evidence

    opt = scipy.optimize.minimize_scalar(neg, bounds=(x0 - 0.3, x0 + 0.3), method="bounded", options={"xatol": 2e-3})
    return abs(x0 - opt.x), max(0.0, -opt.fun - res.log_evidence)


def peer_seconds(n: int = 4096, repeats: int = 3) -> float:
    """Median seconds of one LAPACK float64 Cholesky factorisation of an ``n x n`` SPD matrix: the
    peer the inversion times are divided by (this VM's speed varies by 20-30% between runs)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, n))
    a = np.asfortranarray(x @ x.T / n + np.eye(n))
    times = []
    for _ in range(repeats):
        b = a.copy(order="F")
        t0 = time.perf_counter()
        scipy.linalg.lapack.dpotrf(b, lower=1, overwrite_a=1, clean=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(sims, mask: bool, form: str = "gradient", label: str = "", check: bool = False, peer: float = math.nan) -> None:
    times, single, rmses, evals, nsingle, nunk, stages, checks = [], [], [], [], [], [], {}, []
    for sim in sims:
        op = sim.op
        m = baselines.arc_mask(sim.image, sim.sigma) if mask else None
        t0 = time.perf_counter()
        res = baselines.invert(op, sim.image, sim.sigma, regularization=form, mask=m)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        baselines.invert(op, sim.image, sim.sigma, regularization=form, mask=m, lam=res.lam)
        single.append(time.perf_counter() - t0)
        rmses.append(float(np.sqrt(np.mean((res.source - sim.source) ** 2))))
        evals.append(res.evaluations)
        nsingle.append(res.single_precision_evaluations)
        nunk.append(res.n_unknowns)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        if check:
            checks.append(_check_optimum(sim, form, m, res))
    where = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in stages.items() if k != "total")
    print(f"{label:34s} {form:9s} mask={'arc' if mask else 'none':4s} | evidence-optimised "
          f"{statistics.median(times):6.2f} s (IQR {np.percentile(times, 25):.2f}-{np.percentile(times, 75):.2f}; "
          f"{statistics.median(times) / peer:.1f} x peer) | "
          f"single solve {statistics.median(single):5.2f} s | RMSE {statistics.median(rmses):.4f} | "
          f"{statistics.median(evals):.0f} factorisations ({statistics.median(nsingle):.0f} single precision; "
          f"range {min(evals)}-{max(evals)}) of {statistics.median(nunk):.0f} unknowns")
    print(f"{'':34s} median s per stage: {where}")
    if checks:
        dx, loss = np.array(checks).T
        print(f"{'':34s} vs a bounded scalar maximisation: |d log10 lam| median {np.median(dx):.3f} max {dx.max():.3f}; "
              f"log evidence below the maximum by median {np.median(loss):.3f} max {loss.max():.3f} nats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lenses", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check-optimum", action="store_true", help="compare with a bounded scalar maximisation")
    args = ap.parse_args()
    print(f"baselines: CHOLMOD {'available' if baselines.have_cholmod() else 'missing'}; "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']}")
    target = ObservationPreset(name="psf0.08", psf_fwhm=(0.08, 0.08), psf_size=9, snr=(10.0, 200.0))
    sims = [simulate(i, args.seed, SimulationConfig(preset=target)) for i in range(args.lenses)]
    for s in sims:
        _ = s.op.matrix  # the operator is an input: form F L before timing
    baselines.invert(sims[0].op, sims[0].image, sims[0].sigma, lam=1.0)  # compile kernels
    peer = peer_seconds()
    print(f"peer: LAPACK float64 Cholesky of a 4096^2 SPD matrix, {peer:.3f} s (median of 3)")
    run(sims, mask=False, label="192^2 image, 64^2 source, PSF 0.08", check=args.check_optimum, peer=peer)
    run(sims, mask=True, label="192^2 image, 64^2 source, PSF 0.08", check=args.check_optimum, peer=peer)
    sims = [simulate(i, args.seed + 1, SimulationConfig(preset=PRESETS["realistic"])) for i in range(args.lenses)]
    for s in sims:
        _ = s.op.matrix
    for form in ("zeroth", "gradient", "curvature"):
        run(sims, mask=True, form=form, label="preset realistic", check=args.check_optimum, peer=peer)


if __name__ == "__main__":
    main()
