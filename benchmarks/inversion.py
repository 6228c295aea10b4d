#!/usr/bin/env python
"""Time the evidence-optimised Warren-Dye inversion and report its reconstruction error.

    python benchmarks/inversion.py [--lenses 8] [--seed 1]

Part 1 (the speed target): 192x192 image, 64x64 source, 0.08 arcsec Gaussian PSF, S/N 10-200,
with all pixels and with a data-driven arc mask (baselines.arc_mask). Part 2: lenses of the
default `realistic` preset (PSF 0.05-0.15 arcsec), with arc masks: time and RMSE per
regularization. Prints medians and where the time goes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import baselines
from lensinv.simulate import PRESETS, ObservationPreset, SimulationConfig, simulate


def run(sims, mask: bool, form: str = "gradient", label: str = "") -> None:
    times, single, rmses, evals, nsingle, nunk, stages = [], [], [], [], [], [], {}
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
    where = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in stages.items() if k != "total")
    print(f"{label:34s} {form:9s} mask={'arc' if mask else 'none':4s} | evidence-optimised "
          f"{statistics.median(times):6.2f} s (IQR {np.percentile(times, 25):.2f}-{np.percentile(times, 75):.2f}) | "
          f"single solve {statistics.median(single):5.2f} s | RMSE {statistics.median(rmses):.4f} | "
          f"{statistics.median(evals):.0f} factorisations ({statistics.median(nsingle):.0f} single precision; "
          f"range {min(evals)}-{max(evals)}) of {statistics.median(nunk):.0f} unknowns")
    print(f"{'':34s} median s per stage: {where}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lenses", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"baselines: CHOLMOD {'available' if baselines.have_cholmod() else 'missing'}")
    target = ObservationPreset(name="psf0.08", psf_fwhm=(0.08, 0.08), psf_size=9, snr=(10.0, 200.0))
    sims = [simulate(i, args.seed, SimulationConfig(preset=target)) for i in range(args.lenses)]
    for s in sims:
        _ = s.op.matrix  # the operator is an input: form F L before timing
    baselines.invert(sims[0].op, sims[0].image, sims[0].sigma, lam=1.0)  # compile kernels
    run(sims, mask=False, label="192^2 image, 64^2 source, PSF 0.08")
    run(sims, mask=True, label="192^2 image, 64^2 source, PSF 0.08")
    sims = [simulate(i, args.seed + 1, SimulationConfig(preset=PRESETS["realistic"])) for i in range(args.lenses)]
    for s in sims:
        _ = s.op.matrix
    for form in ("zeroth", "gradient", "curvature"):
        run(sims, mask=True, form=form, label="preset realistic")


if __name__ == "__main__":
    main()
