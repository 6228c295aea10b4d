#!/usr/bin/env python
"""Compare the RIM with evidence-optimised Warren-Dye inversions on simulated test lenses.

    python scripts/compare_baselines.py --data data/test.h5 --out results/compare [--checkpoint runs/rim/checkpoint.pt]

On real galaxies (the 80 validation galaxies of lensinv.galaxies, never trained on), with --sources
instead of --data: the lenses are built first into OUT/data.h5 (resumable; the realistic lens prior):

    python scripts/compare_baselines.py --sources validation --preset validation-fixed --n 160 --out results/val-fixed
    python scripts/compare_baselines.py --sources validation --preset validation --n 160 --out results/val

(the same as build_operators.py --preset validation[-fixed] --n 160 --seed 0 --out D.h5, then --data D.h5).

On interferometric data (the alma preset: ALMA-like visibilities, lensinv.uv), the RIM runs on the
visibilities' dirty image and beam (default weights rim/weights/rim_alma.pt) and Warren-Dye is the
evidence-optimised uv-plane inversion of every visibility (--mask does not apply):

    python scripts/build_operators.py --preset alma --n 16 --seed 7 --out results/alma/val.h5
    python scripts/compare_baselines.py --data results/alma/val.h5 --forms gradient,curvature --out results/alma/cmp

Writes OUT/summary.md, OUT/summary.json, OUT/metrics.csv and figures: examples.png (the seed's
Figure 2 layout: observed, reconstruction, truth and residual per method; none with --examples 0),
flux.png (the seed's Figure 3: true against reconstructed flux with the 1:1 line), rmse_hist.png
and rmse_vs_snr.png.

A lens that cannot be read or reconstructed (a corrupt record, a NaN pixel or lens parameter) is
reported on stderr, listed in OUT/failed.csv and under "failed" in summary.json and summary.md,
and the run goes on. metrics.csv (and failed.csv) are rewritten atomically after every lens, so an
interrupted run keeps what it did; the summary and figures are written at the end (also on
Ctrl-C, for the lenses done). Exit status 0 when at least one lens was compared, 1 when none was,
2 for bad arguments (checked before any work).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# OpenBLAS's idle threads sleep at once rather than spin between inversions (README: timing notes)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import baselines  # noqa: E402
import rim  # noqa: E402
from lensinv.cli import int_at_least  # noqa: E402
from lensinv.dataset import LensDataset  # noqa: E402
from lensinv.io import atomic_write, write_text_atomic  # noqa: E402
from lensinv.metrics import flux_error, reduced_chi2, rmse, ssim  # noqa: E402

METRICS = ("rmse", "ssim", "flux_error", "chi2_per_pixel", "seconds")


@dataclass(frozen=True)
class Reconstruction:
    method: str
    source: np.ndarray
    seconds: float


def reconstruct_all(model, op, image: np.ndarray, sigma: float, forms: tuple[str, ...], use_mask: bool,
                    rim_wd_forms: tuple[str, ...] = (), transforms: int = rim.DEFAULT_TRANSFORMS, rim_wd_mask: bool | None = None,
                    rim_wd_select: str = "binned"):
    """RIM, Warren-Dye (each regularization) and RIM+WD reconstructions of one lens.

    RIM+WD: the RIM's estimate as the prior mean of an evidence-optimised Warren-Dye inversion, the
    regularization among ``rim_wd_forms`` chosen by evidence (``rim_wd_select``: of the full or the 2x2-binned
    problem, see ``baselines.invert_by_evidence``; its time includes the RIM's), on the arc
    mask if ``rim_wd_mask`` (None: as Warren-Dye, ``use_mask``; source pixels the used data do not
    reach keep the RIM's estimate). The RIM averages over ``transforms`` turns and mirrors of the
    observation (:mod:`rim.symmetry`).
    Complex ``image`` (visibilities, ``op`` a VisibilityOperator): the uv-plane inversion of every
    visibility (no arc mask)."""
    out = []
    t0 = time.perf_counter()
    rim_source = model.reconstruct(op, image, sigma if sigma > 0 else 1.0, transforms=transforms)
    t_rim = time.perf_counter() - t0
    out.append(Reconstruction("RIM", rim_source, t_rim))
    if np.iscomplexobj(image):
        wd_sigma, wd_mask = sigma, None
    else:
        wd = baselines.warren_dye_setup(image, sigma, mask=use_mask)
        wd_sigma, wd_mask = wd.sigma, wd.mask
    for form in forms:
        t0 = time.perf_counter()
        res = baselines.invert(op, image, wd_sigma, regularization=form, mask=wd_mask)
        out.append(Reconstruction(f"WD-{form}", res.source, time.perf_counter() - t0))
    if rim_wd_forms:
        t0 = time.perf_counter()
        if rim_wd_mask is not None and rim_wd_mask != use_mask and not np.iscomplexobj(image):
            wd_mask = baselines.warren_dye_setup(image, sigma, mask=rim_wd_mask).mask
        res = baselines.invert_by_evidence(op, image, wd_sigma, forms=rim_wd_forms, mask=wd_mask, prior_mean=rim_source,
                                           select=rim_wd_select)
        out.append(Reconstruction("RIM+WD", res.source, t_rim + time.perf_counter() - t0))
    return out


def lens_metrics(rec: Reconstruction, truth: np.ndarray, op, image: np.ndarray, sigma: float) -> dict:
    return {"rmse": rmse(rec.source, truth), "ssim": ssim(rec.source, truth, data_range=1.0),
            "flux_error": flux_error(rec.source, truth),
            "chi2_per_pixel": reduced_chi2(op.apply(rec.source), image, sigma), "seconds": rec.seconds}


def summarise(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        out[m] = {}
        for k in METRICS:
            v = np.array([r[k] for r in sel], dtype=float)
            v = v[np.isfinite(v)]
            if k == "flux_error":
                v = np.abs(v)
            out[m][k] = ({"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                          "q75": float(np.percentile(v, 75))} if v.size else None)
    return out


def write_summary(path: Path, summary: dict, n: int, device: str, data: str, checkpoint: str, mask: bool,
                  failed: list[dict] = (), examples: bool = True, visibilities: bool = False,
                  transforms: int = rim.DEFAULT_TRANSFORMS, rim_wd_mask: str = "same", rim_wd_select: str = "binned") -> None:
    names = {"rmse": "source RMSE", "ssim": "SSIM", "flux_error": "|flux error|", "chi2_per_pixel": "chi2/N",
             "seconds": f"time per lens (s, {device})"}
    lines = [f"# RIM versus Warren-Dye on {n} test lenses", "",
             f"Data: `{data}`; RIM weights: `{checkpoint}`. Median (interquartile range) per lens.", "",
             "| method | " + " | ".join(names[k] for k in METRICS) + " |",
             "| --- |" + " --- |" * len(METRICS)]
    for m, stats in summary.items():
        cells = []
        for k in METRICS:
            s = stats[k]
            cells.append("n/a" if s is None else f"{s['median']:.4g} ({s['q25']:.3g}-{s['q75']:.3g})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if visibilities:
        data_words = ("chi2/N of the reconstruction's model visibilities against the data, per real datum (real "
                      "and imaginary parts). Warren-Dye: evidence-optimised in the uv plane on every visibility; ")
    else:
        data_words = ("chi2/N of the reconstruction's image against the data (n/a for noise-free data). "
                      f"Warren-Dye: evidence-optimised, {'on a data-driven arc mask' if mask else 'on all pixels'}; ")
    lines += ["", "RMSE per pixel of peak-normalised sources; |flux error| relative to the true total flux; "
              + data_words + "RIM: its final estimate"
              + (f", the mean over {transforms} turns and mirrors of the observation (rim.symmetry)." if transforms > 1
                 else " (one pass of the network).")
              + ("" if rim_wd_mask == "same" or visibilities else
                 f" RIM+WD: on {'the data-driven arc mask' if rim_wd_mask == 'arcs' else 'all pixels'}.")
              + (" RIM+WD's regularization form: the highest evidence of the "
                 + ("2x2-binned source's (the winner solved alone)." if rim_wd_select == "binned"
                    else "full inversions'."))]
    if failed:
        lines += ["", f"Failed ({len(failed)} lenses, not in the statistics; also failed.csv):", ""]
        lines += [f"- lens at position {f['position']} of the data set: {f['error']}" for f in failed]
    if summary:
        lines += [""] + (["![examples](examples.png)", ""] if examples else []) + [
            "![flux](flux.png)", "", "![rmse](rmse_hist.png)", "", "![rmse vs snr](rmse_vs_snr.png)"]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _save(fig, path: Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def figures(out: Path, examples: list, rows: list[dict], methods: list[str], extent_src, extent_img) -> None:
    if examples:
        example_figure(out, examples, methods, extent_src, extent_img)
    summary_figures(out, rows, methods)


def example_figure(out: Path, examples: list, methods: list[str], extent_src, extent_img) -> None:
    k = len(examples)
    ncol = 2 + 2 * len(methods)
    fig, axes = plt.subplots(k, ncol, figsize=(2.1 * ncol, 2.2 * k), squeeze=False)
    for r, (ex, recs) in enumerate(examples):
        # one colour scale per row: the truth's for sources, the largest residual's for residuals
        lim = max(max(float(np.abs(rec.source - ex.source).max()) for rec in recs), 1e-6)
        observed = "observed" if ex.visibilities is None else "dirty image"
        panels = [(ex.image, extent_img, observed, "magma"), (ex.source, extent_src, "truth", "magma")]
        for rec in recs:
            panels.append((rec.source, extent_src, rec.method, "magma"))
            panels.append((rec.source - ex.source, extent_src, f"{rec.method} - truth", "RdBu_r"))
        for c, (img, ext, title, cmap) in enumerate(panels):
            ax = axes[r, c]
            if cmap == "RdBu_r":
                ax.imshow(img, origin="lower", extent=ext, cmap=cmap, vmin=-lim, vmax=lim)
            elif c == 0:
                ax.imshow(img, origin="lower", extent=ext, cmap=cmap)
            else:
                ax.imshow(img, origin="lower", extent=ext, cmap=cmap, vmin=0, vmax=float(ex.source.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, out / "examples.png")


def summary_figures(out: Path, rows: list[dict], methods: list[str]) -> None:
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods):
        sel = [r for r in rows if r["method"] == m]
        t = np.array([r["true_flux"] for r in sel])
        e = np.array([r["flux"] for r in sel])
        ax.scatter(t, e, s=10)
        top = np.concatenate([t, e])
        top = top[np.isfinite(top)]
        lim = [0, (float(top.max()) if top.size else 1.0) * 1.05]
        ax.plot(lim, lim, "r-", lw=1)
        ax.set_xlabel("true flux (sum of pixels)")
        ax.set_ylabel("reconstructed flux")
        ax.set_title(m, fontsize=9)
    fig.tight_layout()
    _save(fig, out / "flux.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    all_r = np.array([r["rmse"] for r in rows], dtype=float)
    all_r = all_r[np.isfinite(all_r) & (all_r > 0)]
    lo, hi = (all_r.min() * 0.9, all_r.max() * 1.1) if all_r.size else (1e-3, 1.0)
    bins = np.logspace(np.log10(lo), np.log10(hi), 20)
    for m in methods:
        v = np.array([r["rmse"] for r in rows if r["method"] == m], dtype=float)
        ax.hist(v[np.isfinite(v) & (v > 0)], bins=bins, histtype="step", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("source RMSE")
    ax.set_ylabel("lenses")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "rmse_hist.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    finite = [r for r in rows if np.isfinite(r["snr"])]
    if finite:
        for m in methods:
            sel = [r for r in finite if r["method"] == m]
            ax.scatter([r["snr"] for r in sel], [r["rmse"] for r in sel], s=10, label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "noise-free data: no S/N", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("peak S/N of the lensed image")
    ax.set_ylabel("source RMSE")
    fig.tight_layout()
    _save(fig, out / "rmse_vs_snr.png")


FIELDS = ("lens", "method", "snr", "psf_fwhm", "theta_E", "true_flux", "flux", *METRICS)


def compare_lens(ds: LensDataset, i: int, model, forms: tuple[str, ...], use_mask: bool,
                 rim_wd_forms: tuple[str, ...] = (), transforms: int = rim.DEFAULT_TRANSFORMS, rim_wd_mask: bool | None = None,
                 rim_wd_select: str = "binned"):
    """Metrics rows and reconstructions of lens ``i`` (raises for a bad lens)."""
    ex = ds[i]
    op = ex.operator()
    recs = reconstruct_all(model, op, ex.data, ex.sigma, forms, use_mask, rim_wd_forms, transforms, rim_wd_mask,
                           rim_wd_select)
    rows = [{"lens": ex.index, "method": rec.method, "snr": ex.snr, "psf_fwhm": ex.psf_fwhm,
             "theta_E": ex.lens.components[0].theta_E, "true_flux": float(ex.source.sum()),
             "flux": float(rec.source.sum()), **lens_metrics(rec, ex.source, op, ex.data, ex.sigma)}
            for rec in recs]
    return ex, recs, rows


#: what one bad lens may raise without stopping the run (corrupt records: OSError from h5py;
#: NaN pixels or lens parameters: ValueError; failed factorisations, torch errors: the rest)
LENS_ERRORS = (ValueError, OSError, ArithmeticError, RuntimeError, np.linalg.LinAlgError)


def write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="HDF5 data set (build_operators.py)")
    src.add_argument("--sources", default=None,
                     help="build the lenses first (into OUT/data.h5) with these sources: validation (the validation "
                          "galaxies), galaxies, real, procedural, or a path to galaxy images")
    ap.add_argument("--preset", default="validation",
                    help="with --sources: the observation preset (validation: the realistic PSF and S/N ranges; "
                         "validation-fixed: PSF 0.08 arcsec, peak S/N 50; realistic; magnet)")
    ap.add_argument("--n", type=int_at_least(1), default=160, help="with --sources: lenses to build (default 160)")
    ap.add_argument("--seed", type=int, default=0, help="with --sources: data-set seed (default 0)")
    ap.add_argument("--galaxy-file", default=None, help="with --sources: the real-galaxy .npz (default: ../shared/data)")
    ap.add_argument("--checkpoint", default=None, help="RIM weights (default: the shipped ones)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--limit", type=int_at_least(1), default=None, help="use the first N >= 1 lenses")
    ap.add_argument("--forms", default="zeroth,gradient,curvature", help="Warren-Dye regularizations")
    ap.add_argument("--rim-wd-forms", default="gradient,curvature",
                    help="RIM+WD (the RIM estimate as the prior mean of a Warren-Dye inversion): the regularizations "
                         "to choose from by evidence; empty: no RIM+WD")
    ap.add_argument("--rim-wd-mask", choices=["same", "arcs", "all"], default="same",
                    help="RIM+WD's data: as Warren-Dye's (same, the default), the data-driven arc mask (arcs; source "
                         "pixels it does not reach keep the RIM's estimate; faster) or all pixels")
    ap.add_argument("--rim-wd-select", choices=list(baselines.SELECTIONS), default="binned",
                    help="RIM+WD's choice of form: by the evidence of the 2x2-binned source, solving the winner alone "
                         "(binned, the default: half the time for two forms) or of every form's full inversion")
    ap.add_argument("--rim-transforms", type=int, choices=list(rim.TRANSFORM_COUNTS), default=rim.DEFAULT_TRANSFORMS,
                    help="the RIM's estimate averaged over this many turns and mirrors of each observation "
                         f"(rim.symmetry; 1: one pass of the network); default {rim.DEFAULT_TRANSFORMS}")
    ap.add_argument("--mask", action="store_true",
                    help="Warren-Dye on a data-driven arc mask (faster; it may miss faint emission) instead of all pixels")
    ap.add_argument("--examples", type=int_at_least(0), default=4,
                    help="lenses in the example figure (0: no example figure)")
    ap.add_argument("--device", default="cpu", help="torch device for the RIM (cpu, cuda, cuda:1, mps)")
    args = ap.parse_args(argv)
    try:
        rim.resolve_device(args.device)
    except ValueError as exc:
        ap.error(f"argument --device: {exc}")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"argument --out: {args.out} exists and is not a folder")
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip())
    bad = [f for f in forms if f not in baselines.FORMS]
    if bad or not forms:
        ap.error(f"argument --forms: unknown regularization(s) {bad or args.forms!r}; choose from {baselines.FORMS}")
    rim_wd_forms = tuple(f.strip() for f in args.rim_wd_forms.split(",") if f.strip())
    bad = [f for f in rim_wd_forms if f not in baselines.FORMS]
    if bad:
        ap.error(f"argument --rim-wd-forms: unknown regularization(s) {bad}; choose from {baselines.FORMS}")
    logging.basicConfig(level=logging.WARNING)
    if args.sources is not None:
        from lensinv.dataset import build_dataset
        from lensinv.simulate import PRESETS, simulation_config

        if args.preset not in PRESETS:
            ap.error(f"argument --preset: must be one of {', '.join(PRESETS)}, got {args.preset!r}")
        try:
            config = simulation_config(args.preset, args.sources, args.galaxy_file)
            args.out.mkdir(parents=True, exist_ok=True)
            data = args.out / "data.h5"
            with tqdm(total=args.n, unit="lens", desc="building lenses") as bar:
                build_dataset(data, args.n, args.seed, config, progress=bar.update)
        except (ValueError, OSError) as exc:
            print(f"error: --sources {args.sources}: {exc}", file=sys.stderr)
            return 2
        args.data = str(data)
    try:
        ds = LensDataset(args.data)
        visibilities = getattr(ds, "coverage", None) is not None  # interferometric data (format 3)
        default = rim.ALMA_WEIGHTS if visibilities else rim.WEIGHTS
        model = rim.load_pretrained(args.checkpoint or default, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create --out {args.out}: {exc}", file=sys.stderr)
        return 2
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    rows, examples, failed = [], [], []
    interrupted = False
    write_csv(args.out / "metrics.csv", FIELDS, rows)
    try:
        for i in tqdm(range(n), unit="lens"):
            try:
                ex, recs, lens_rows = compare_lens(ds, i, model, forms, args.mask, rim_wd_forms, args.rim_transforms,
                                                   rim_wd_mask={"arcs": True, "all": False}.get(args.rim_wd_mask),
                                                   rim_wd_select=args.rim_wd_select)
            except LENS_ERRORS as exc:
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())
                tqdm.write(f"warning: lens {i} (position in --data) failed, skipped: {msg}", file=sys.stderr)
                failed.append({"position": i, "error": msg})
                write_csv(args.out / "failed.csv", ("position", "error"), failed)
                continue
            rows += lens_rows
            write_csv(args.out / "metrics.csv", FIELDS, rows)
            if len(examples) < args.examples:
                examples.append((ex, recs))
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted: writing the summary of the {len({r['lens'] for r in rows})} lenses done",
              file=sys.stderr)
    if not failed:  # no stale list from an earlier run in the same folder
        with contextlib.suppress(FileNotFoundError):
            (args.out / "failed.csv").unlink()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n_ok = len({r["lens"] for r in rows})
    summary = summarise(rows, methods)
    ckpt = args.checkpoint or str(default.relative_to(Path(rim.__file__).resolve().parents[1]))
    write_text_atomic(args.out / "summary.json", json.dumps(
        {"n_lenses": n_ok, "n_requested": n, "n_failed": len(failed), "failed": failed, "interrupted": interrupted,
         "data": args.data, "checkpoint": ckpt, "device": args.device, "rim_transforms": args.rim_transforms,
         "rim_wd_mask": args.rim_wd_mask, "rim_wd_select": args.rim_wd_select,
         "methods": summary}, indent=2))
    write_summary(args.out / "summary.md", summary, n_ok, args.device, args.data, ckpt, args.mask, failed,
                  examples=bool(examples), visibilities=visibilities, transforms=args.rim_transforms,
                  rim_wd_mask=args.rim_wd_mask, rim_wd_select=args.rim_wd_select)
    if rows:
        figures(args.out, examples, rows, methods, ds.source_grid.extent, ds.image_grid.extent)
    print((args.out / "summary.md").read_text().split("\n\n![")[0])
    if failed:
        print(f"{len(failed)} of {n} lenses failed (listed in {args.out}/failed.csv)", file=sys.stderr)
    if not rows:
        print("error: no lens could be compared", file=sys.stderr)
        return 130 if interrupted else 1
    print(f"wrote {args.out}/summary.md, summary.json, metrics.csv and figures")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
