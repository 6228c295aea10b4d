#!/usr/bin/env python
"""How errors in the lens model propagate into the reconstructed source, for the RIM and for
Warren-Dye (gradient, evidence-optimised): each lens is reconstructed with one parameter
perturbed by a fraction delta, and the source RMSE is compared with the exact-lens RMSE.

    python scripts/lens_error_sensitivity.py --out results/sensitivity [--data test.h5 | --lenses 8]

Perturbations at level delta: theta_E x (1 + delta), q x (1 - delta), phi + delta * pi,
gamma + delta * 0.2 (the prior's full range). Writes sensitivity.csv and sensitivity.png.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import baselines  # noqa: E402
import lensinv  # noqa: E402
import rim  # noqa: E402
from lensinv.io import atomic_write  # noqa: E402
from lensinv.metrics import rmse  # noqa: E402

PARAMS = ("theta_E", "q", "phi", "gamma")


def perturb(lens: lensinv.Lens, param: str, delta: float) -> lensinv.Lens:
    sie, shear = lens.components
    if param == "theta_E":
        sie = lensinv.SIE(sie.theta_E * (1 + delta), sie.q, sie.phi, sie.center)
    elif param == "q":
        sie = lensinv.SIE(sie.theta_E, min(1.0, sie.q * (1 - delta)), sie.phi, sie.center)
    elif param == "phi":
        sie = lensinv.SIE(sie.theta_E, sie.q, sie.phi + delta * np.pi, sie.center)
    elif param == "gamma":
        shear = lensinv.ExternalShear(shear.gamma + delta * 0.2, shear.phi)
    else:
        raise ValueError(f"unknown parameter {param!r}")
    return lensinv.Lens(sie, shear)


def examples(args):
    if args.data:
        from lensinv.dataset import LensDataset

        ds = LensDataset(args.data)
        for i in range(min(args.lenses, len(ds))):
            ex = ds[i]
            yield ex.lens, ex.source, ex.image, ex.sigma, ex.psf, ds.image_grid, ds.source_grid, ds.supersample
    else:
        from lensinv.simulate import PRESETS, SimulationConfig, simulate

        cfg = SimulationConfig(preset=PRESETS["realistic"])
        for i in range(args.lenses):
            s = simulate(i, args.seed, cfg)
            yield s.lens, s.source, s.image, s.sigma, s.psf, s.op.image_grid, s.op.source_grid, s.op.supersample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=None, help="HDF5 data set; default: simulate realistic lenses")
    ap.add_argument("--lenses", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--levels", default="0.001,0.005,0.01,0.02,0.05", help="fractions delta")
    ap.add_argument("--checkpoint", default=None, help="RIM weights (default: shipped)")
    args = ap.parse_args(argv)
    try:
        levels = [float(v) for v in args.levels.split(",") if v]
        model = rim.load_pretrained(args.checkpoint)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (lens, source, image, sigma, psf, ig, sg, ss) in enumerate(tqdm(list(examples(args)), unit="lens")):
        wd = baselines.warren_dye_setup(image, sigma)
        cases = [("exact", 0.0, lens)] + [(p, d, perturb(lens, p, d)) for p in PARAMS for d in levels]
        for param, delta, lens_used in cases:
            op = lensinv.operator(lens_used, ig, sg, psf=psf, supersample=ss)
            r_rim = model.reconstruct(op, image, sigma if sigma > 0 else 1.0)
            r_wd = baselines.invert(op, image, wd.sigma, regularization="gradient", mask=wd.mask).source
            rows.append({"lens": k, "param": param, "delta": delta, "rmse_rim": rmse(r_rim, source),
                         "rmse_wd": rmse(r_wd, source)})
    with atomic_write(args.out / "sensitivity.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    fig, axes = plt.subplots(1, len(PARAMS), figsize=(4 * len(PARAMS), 3.4), sharey=True)
    base = {m: np.median([r[f"rmse_{m}"] for r in rows if r["param"] == "exact"]) for m in ("rim", "wd")}
    for ax, p in zip(axes, PARAMS):
        for m, label in (("rim", "RIM"), ("wd", "Warren-Dye (gradient)")):
            ratio = [np.median([r[f"rmse_{m}"] for r in rows if r["param"] == p and r["delta"] == d]) / base[m]
                     for d in levels]
            ax.plot(levels, ratio, "o-", label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"fractional error delta in {p}")
        ax.set_title(p)
    axes[0].set_ylabel("median RMSE / RMSE with the exact lens")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(args.out / "sensitivity.png") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    print(f"median RMSE with the exact lens: RIM {base['rim']:.4f}, Warren-Dye {base['wd']:.4f}")
    print(f"wrote {args.out}/sensitivity.csv and sensitivity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
