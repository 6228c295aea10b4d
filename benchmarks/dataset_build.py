#!/usr/bin/env python
"""Throughput of data-set building (lenses/s) for a preset, with and without stored operators,
plus the procedural source generator alone (sources/s on one core).

    python benchmarks/dataset_build.py [--n 96] [--preset realistic] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

import lensinv
from lensinv.dataset import build_dataset
from lensinv.simulate import PRESETS, SimulationConfig
from lensinv.sources import ProceduralSources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="realistic")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    grid = PRESETS[args.preset].source_grid
    gen, rng = ProceduralSources(), np.random.default_rng(0)
    numba.set_num_threads(1)
    gen.draw(rng, grid)
    t0 = time.perf_counter()
    for _ in range(2000):
        gen.draw(rng, grid)
    print(f"procedural sources {grid.n}x{grid.n}: {2000 / (time.perf_counter() - t0):.0f} sources/s on one core")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    config = SimulationConfig(preset=PRESETS[args.preset])
    with tempfile.TemporaryDirectory() as tmp:
        build_dataset(Path(tmp) / "warm.h5", 4, 99, config, store_operators=True)  # compile the kernels
        for store in (False, True):
            for w in args.workers:
                path = Path(tmp) / f"b{store}{w}.h5"
                t0 = time.perf_counter()
                build_dataset(path, args.n, 1, config, workers=w, store_operators=store)
                dt = time.perf_counter() - t0
                size = path.stat().st_size / args.n / 1e6
                print(f"preset {args.preset}, operators {'stored' if store else 'not stored'}, {w} worker(s): "
                      f"{args.n / dt:6.1f} lenses/s ({size:.2f} MB/lens on disk)")
    print(f"(lensinv {lensinv.__version__}; timings include process start-up for >1 worker and the final merge)")


if __name__ == "__main__":
    main()
