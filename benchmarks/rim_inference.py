#!/usr/bin/env python
"""Per-lens CPU time of the shipped RIM and of RIM+WD, against the evidence-optimised Warren-Dye
inversion (curvature, all pixels) timed on the same lenses in the same run.

    python benchmarks/rim_inference.py                    # 8 lenses of the realistic preset
    python benchmarks/rim_inference.py --data D.h5 --n 8  # lenses of a build_operators.py file

Rows: the RIM with 1, 2, 4 and 8 symmetries averaged (``RIM.reconstruct(transforms=)``); RIM+WD
(the RIM estimate as the prior mean of an evidence-optimised inversion on all pixels, the form
chosen among gradient and curvature by the 2x2-binned source's evidence, the default, or by
solving both; the last row: curvature alone on the data-driven arc mask, where the source pixels
it does not reach keep the RIM's estimate). Each lens is run once untimed first (warm caches).
Targets (issue 13): RIM <= 0.2 s per lens, RIM+WD <= 1.5 s, with the defaults.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import baselines  # noqa: E402
import rim  # noqa: E402
from lensinv.cli import int_at_least  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One method's median seconds per lens and its ratio to the peer's."""

    name: str
    seconds: float
    ratio: float


def lenses(data: str | None, n: int, seed: int) -> list:
    """``(op, image, sigma)`` of ``n`` lenses: from ``data`` or simulated (realistic preset)."""
    if data is not None:
        from lensinv.dataset import LensDataset

        ds = LensDataset(data)
        return [(ex.operator(), ex.data, ex.sigma) for ex in (ds[i] for i in range(min(n, len(ds))))]
    from lensinv.simulate import PRESETS, SimulationConfig, simulate

    cfg = SimulationConfig(preset=PRESETS["realistic"])
    return [(s.op, s.image, s.sigma) for s in (simulate(i, seed, cfg) for i in range(n))]


def methods(model) -> dict[str, Callable]:
    """name -> ``f(op, image, sigma)``; the first is the peer."""
    def rim_wd(transforms, select, forms=("gradient", "curvature"), mask=False):
        def run(op, image, sigma):
            s0 = model.reconstruct(op, image, sigma, transforms=transforms)
            m = baselines.arc_mask(image, sigma) if mask else None
            return baselines.invert_by_evidence(op, image, sigma, forms=forms, prior_mean=s0, mask=m, select=select)
        return run

    out = {"Warren-Dye curvature (peer)":
           lambda op, image, sigma: baselines.invert(op, image, sigma, regularization="curvature")}
    for k in rim.TRANSFORM_COUNTS:
        default = " (default)" if k == rim.DEFAULT_TRANSFORMS else ""
        out[f"RIM, {k} symmetr{'y' if k == 1 else 'ies'}{default}"] = (
            lambda op, image, sigma, k=k: model.reconstruct(op, image, sigma, transforms=k))
    d = rim.DEFAULT_TRANSFORMS
    out[f"RIM+WD, {d} symmetries, form by binned evidence (default)"] = rim_wd(d, "binned")
    out[f"RIM+WD, {d} symmetries, both forms solved"] = rim_wd(d, "full")
    out["RIM+WD, 8 symmetries, form by binned evidence"] = rim_wd(8, "binned")
    out[f"RIM+WD, {d} symmetries, curvature, arc mask"] = rim_wd(d, "full", ("curvature",), True)
    return out


def measure(cases: list, funcs: dict[str, Callable]) -> list[Row]:
    """Median seconds per lens of each method (one untimed run per lens first) and its ratio to the first's."""
    times = {name: [] for name in funcs}
    for op, image, sigma in cases:
        for name, f in funcs.items():
            f(op, image, sigma)
            t0 = time.perf_counter()
            f(op, image, sigma)
            times[name].append(time.perf_counter() - t0)
    peer = float(np.median(next(iter(times.values()))))
    return [Row(name, float(np.median(t)), float(np.median(t)) / peer) for name, t in times.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a build_operators.py file (default: simulate)")
    ap.add_argument("--n", type=int_at_least(1), default=8, help="lenses (>= 1, default 8)")
    ap.add_argument("--seed", type=int, default=20261206, help="simulation seed")
    args = ap.parse_args(argv)
    model = rim.load_pretrained()
    import torch

    print(f"torch threads {torch.get_num_threads()}, {args.n} lenses")
    rows = measure(lenses(args.data, args.n, args.seed), methods(model))
    print("| method | s per lens (median) | x peer |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r.name} | {r.seconds:.3f} | {r.ratio:.2f} |")


if __name__ == "__main__":
    main()
