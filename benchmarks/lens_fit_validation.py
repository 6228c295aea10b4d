#!/usr/bin/env python
"""Validation of the lens-model fit (issue 14, item 5) on simulated lenses with the lens unknown.

Simulates lenses of an observation preset (default `realistic`: SIE + external shear, Gaussian PSF
and peak S/N from the preset's ranges), fits each with ``baselines.fit_lens`` from nothing but the
image, noise and PSF, and reports per parameter how far the fit is from the truth and whether the
truth lies inside the reported 3-sigma interval.

    python benchmarks/lens_fit_validation.py --n 20 --out results/lens_fit_validation [--shard i/k]
        [--source-n N] [--follow-grid]

Targets (issue 14): theta_E within 1%, q within 0.03, centre within 0.02 arcsec, and the true values
inside the reported 3-sigma intervals for >= 90% of parameters. Resumable: ``lenses.csv`` is
rewritten atomically after every lens and lenses already in it are skipped; ``--shard i/k`` fits
the indices ``j % k == i`` into ``lenses.<i>of<k>.csv``; a run without ``--shard`` fits what no
file of the folder holds yet and summarises every ``lenses*.csv``. Writes ``summary.json`` and
``zscores.png``. ``--source-n`` sets the refinement's source-grid side (``FitConfig.source_n``;
bright sources are under-resolved on the default 32); each row records it, and a folder holding
rows of another side (or, with ``--source-n``, rows that did not record theirs) is refused.
``--follow-grid`` fits with ``FitConfig.follow_grid`` (the refinement's source grid carried with
the lens centre); each row records it, and a folder holding rows of the other setting (or, with
``--follow-grid``, rows that did not record it) is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

from baselines.lens_fit import FitConfig, fit_lens  # noqa: E402
from lensinv.cli import int_at_least, shard_spec  # noqa: E402
from lensinv.io import atomic_path, write_text_atomic  # noqa: E402
from lensinv.simulate import PRESETS, simulate, simulation_config  # noqa: E402

PARAMS = ("theta_E", "q", "phi", "center_x", "center_y", "gamma", "gamma_phi")
ANGLES = {"phi", "gamma_phi"}  # defined modulo pi
#: the fit's settings (None: FitConfig()); tests set a quick one
FIT_CONFIG: FitConfig | None = None
#: the preset's grids may be replaced (tests: a small image); None keeps the preset's
PRESET_OVERRIDE = None


@dataclass(frozen=True)
class Summary:
    """What the validation found over the fitted lenses (worst cases, fractions, median wall time)."""

    n_lenses: int
    theta_E_rel_err_max: float
    q_err_max: float
    center_err_max: float
    fraction_within_1pct_theta_E: float
    fraction_accurate: float  # lenses meeting all three accuracy targets
    fraction_within_3sigma: float
    fraction_within_3sigma_curvature: float  # the curvature's errors alone (no source-grid term)
    fraction_within_3sigma_accurate: float  # over the accurate lenses only (NaN: none): the errors'
    # calibration where the fit found the lens, apart from the fits that missed it
    wall_s_median: float
    targets_met: bool


def truth_params(lens) -> dict[str, float]:
    """The SIE + shear parameters of a simulated lens, under the fit's names."""
    sie, shear = lens.components
    return {"theta_E": float(sie.theta_E), "q": float(sie.q), "phi": float(sie.phi),
            "center_x": float(sie.center[0]), "center_y": float(sie.center[1]),
            "gamma": float(shear.gamma), "gamma_phi": float(shear.phi)}


def difference(name: str, fit: float, true: float) -> float:
    """fit - true, angles wrapped to (-pi/2, pi/2]."""
    d = fit - true
    if name in ANGLES:
        d = (d + math.pi / 2) % math.pi - math.pi / 2
    return d


def fit_config(source_n: int | None = None, follow_grid: bool = False) -> FitConfig:
    """The fit's settings: ``FIT_CONFIG`` (default ``FitConfig()``), with ``source_n`` where given
    and ``follow_grid`` where true."""
    cfg = FIT_CONFIG if FIT_CONFIG is not None else FitConfig()
    cfg = cfg if source_n is None else replace(cfg, source_n=source_n)
    return replace(cfg, follow_grid=True) if follow_grid else cfg


def fit_one(index: int, seed: int, config, fit_cfg: FitConfig | None = None) -> dict[str, float]:
    """Simulate lens ``index`` and fit it with the lens unknown (settings ``fit_cfg``, default
    :func:`fit_config`); one CSV row."""
    fit_cfg = fit_config() if fit_cfg is None else fit_cfg
    obs = simulate(index, seed, config)
    t0 = time.perf_counter()
    fit = fit_lens(obs.image, obs.sigma, obs.image_grid, obs.psf, config=fit_cfg)
    row = {"index": index, "wall_s": time.perf_counter() - t0, "chi2_per_pixel": fit.chi2_per_pixel,
           "hessian_ok": int(fit.hessian_ok), "snr": obs.snr, "psf_fwhm": obs.psf_fwhm,
           "source_n": fit_cfg.source_n, "follow_grid": int(fit_cfg.follow_grid)}
    true = truth_params(obs.lens)
    stat = fit.params_std_curvature or {k: math.nan for k in PARAMS}
    for k in PARAMS:
        row[f"{k}_true"], row[f"{k}_fit"], row[f"{k}_std"] = true[k], fit.params[k], fit.params_std[k]
        row[f"{k}_std_curvature"] = stat[k]
    return row


def recorded_clash(rows, column: str, wanted: float) -> tuple[list[float], bool]:
    """The values of a setting's ``column`` that ``rows`` recorded other than ``wanted`` (sorted),
    and whether some row did not record it (an older version's: missing or NaN)."""
    values = {r.get(column, math.nan) for r in rows}
    return sorted(v for v in values if math.isfinite(v) and v != wanted), any(not math.isfinite(v) for v in values)


def read_rows(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    names = list(dict.fromkeys(k for r in rows for k in r))  # rows of older versions lack columns
    w = csv.DictWriter(buf, fieldnames=names, restval="nan")
    w.writeheader()
    w.writerows(sorted(rows, key=lambda r: r["index"]))
    write_text_atomic(path, buf.getvalue())


def summarise(rows: list[dict[str, float]]) -> Summary:
    theta = np.array([abs(r["theta_E_fit"] / r["theta_E_true"] - 1) for r in rows])
    dq = np.array([abs(r["q_fit"] - r["q_true"]) for r in rows])
    dc = np.array([math.hypot(r["center_x_fit"] - r["center_x_true"], r["center_y_fit"] - r["center_y_true"])
                   for r in rows])
    accurate = (theta <= 0.01) & (dq <= 0.03) & (dc <= 0.02)

    def within(suffix: str, chosen=None) -> float:  # a NaN or missing std counts as outside
        chosen = rows if chosen is None else chosen
        if not chosen:
            return math.nan
        return float(np.mean([abs(difference(k, r[f"{k}_fit"], r[f"{k}_true"])) <= 3 * r.get(f"{k}{suffix}", math.nan)
                              for r in chosen for k in PARAMS]))

    inside = within("_std")
    met = bool(accurate.all()) and inside >= 0.9
    return Summary(n_lenses=len(rows), theta_E_rel_err_max=float(theta.max()), q_err_max=float(dq.max()),
                   center_err_max=float(dc.max()), fraction_within_1pct_theta_E=float(np.mean(theta <= 0.01)),
                   fraction_accurate=float(np.mean(accurate)), fraction_within_3sigma=inside,
                   fraction_within_3sigma_curvature=within("_std_curvature"),
                   fraction_within_3sigma_accurate=within("_std", [r for r, a in zip(rows, accurate) if a]),
                   wall_s_median=float(np.median([r["wall_s"] for r in rows])),
                   targets_met=met)


def figure(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, k in enumerate(PARAMS):
        z = [difference(k, r[f"{k}_fit"], r[f"{k}_true"]) / r[f"{k}_std"] for r in rows]
        ax.scatter(np.full(len(z), j) + np.linspace(-0.2, 0.2, len(z)), z, s=12)
    ax.axhspan(-3, 3, color="0.9", zorder=0)
    ax.set_xticks(range(len(PARAMS)), PARAMS, rotation=30)
    ax.set_ylabel("(fit - truth) / reported sigma")
    ax.set_title(f"lens fit, lens unknown: {len(rows)} simulated lenses")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int_at_least(1), default=20, help="lenses (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    ap.add_argument("--preset", default="realistic", choices=[p for p, v in PRESETS.items()
                                                              if v.interferometer is None and v.snr is not None])
    ap.add_argument("--out", type=Path, required=True, help="output folder (created; resumed if present)")
    ap.add_argument("--shard", type=shard_spec, default=None, help="fit only indices j %% k == i")
    ap.add_argument("--source-n", type=int_at_least(2), default=None,
                    help="the refinement's source-grid side (default FitConfig's, 32)")
    ap.add_argument("--follow-grid", action="store_true",
                    help="the refinement's source grid follows the lens centre (FitConfig.follow_grid)")
    args = ap.parse_args(argv)
    fit_cfg = fit_config(args.source_n, args.follow_grid)
    config = simulation_config(args.preset)
    if PRESET_OVERRIDE is not None:
        config = PRESET_OVERRIDE(config)
    args.out.mkdir(parents=True, exist_ok=True)
    i, k = args.shard or (0, 1)
    path = args.out / ("lenses.csv" if args.shard is None else f"lenses.{i}of{k}.csv")
    rows = read_rows(path)
    fitted = {int(r["index"]): r for p in sorted(args.out.glob("lenses*.csv")) for r in read_rows(p)}  # any shard's
    other, unrecorded = recorded_clash(fitted.values(), "source_n", fit_cfg.source_n)
    if other:
        ap.error(f"--source-n {fit_cfg.source_n}: {args.out} holds lenses fitted with source_n "
                 f"{[int(n) for n in other]}; use another --out")
    if args.source_n is not None and unrecorded:
        ap.error(f"--source-n {args.source_n}: {args.out} holds lenses of an older version, which did not record "
                 f"their source grid; use another --out")
    other, unrecorded = recorded_clash(fitted.values(), "follow_grid", float(fit_cfg.follow_grid))
    if other:
        ap.error(f"follow_grid {fit_cfg.follow_grid}: {args.out} holds lenses fitted with the other setting; "
                 f"use another --out")
    if fit_cfg.follow_grid and unrecorded:
        ap.error(f"--follow-grid: {args.out} holds lenses of an older version, which did not record whether "
                 f"their grid followed the lens (it did not); use another --out")
    todo = [j for j in range(args.n) if j % k == i and j not in fitted]
    print(f"{len(fitted)} lenses already fitted in {args.out}; fitting {len(todo)} into {path.name}", flush=True)
    for j in todo:
        row = fit_one(j, args.seed, config, fit_cfg)
        rows.append(row)
        fitted[j] = row
        write_rows(path, rows)
        print(f"lens {j}: theta_E {row['theta_E_fit']:.4f} (true {row['theta_E_true']:.4f}), "
              f"q {row['q_fit']:.3f} ({row['q_true']:.3f}), {row['wall_s']:.0f} s", flush=True)
    if args.shard is not None:
        return 0
    rows = [fitted[j] for j in sorted(fitted) if j < args.n]
    summary = summarise(rows)
    write_text_atomic(args.out / "summary.json", json.dumps(summary.__dict__, indent=2) + "\n")
    figure(rows, args.out / "zscores.png")
    print(json.dumps(summary.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
