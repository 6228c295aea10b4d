#!/usr/bin/env python
"""Build a data set of simulated lenses (sources, observed images, lens parameters, PSFs and,
optionally, each lens's sparse operator F L) into an HDF5 file.

    python scripts/build_operators.py --n 1000 --seed 1 --out data/train.h5 --workers 2
    python scripts/build_operators.py --n 100000 --seed 1 --out data/train-003.h5 --shard 3/16   # one array job

Real galaxies (lensinv.galaxies; the Galaxy Zoo file under ../shared/data or $LENSINV_GALAXIES):

    python scripts/build_operators.py --n 1000 --seed 1 --out data/galaxies.h5 --preset galaxies      # training
    python scripts/build_operators.py --n 160 --seed 9 --out data/val.h5 --preset validation          # comparison
    python scripts/build_operators.py --n 160 --seed 9 --out data/val-fixed.h5 --preset validation-fixed

ALMA-like visibilities (lensinv.uv; finufft needed), stored per lens with their dirty image and the uv
coverage once per file (data-set format 3):

    python scripts/build_operators.py --n 16 --seed 7 --out data/alma-val.h5 --preset alma

--preset sets the observation and its default sources (galaxies: realistic PSF and noise, real galaxies
of the training split mixed half and half with procedural ones; validation: the same observation of the
80 validation galaxies; validation-fixed: PSF 0.08 arcsec, peak S/N 50; alma: the galaxies sources observed
by an ALMA-like array, dirty-image peak S/N 10-200); --sources overrides them.

Deterministic (lens i draws from the stream (seed, i), whatever --workers is) and
resumable: rerun the same command after an interruption and it finishes the file
(reusing the finished parts, whatever --part-size they were built with).
A file or unfinished build with another configuration is refused, never overwritten,
and a second build of the same --out while one runs fails at once (exit code 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from lensinv.cli import int_at_least, shard_spec
from lensinv.dataset import build_dataset, shard_range
from lensinv.simulate import PRESETS, SOURCE_SPECS, simulation_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int_at_least(1), required=True, help="lenses in the whole data set (all shards)")
    ap.add_argument("--seed", type=int, required=True, help="data-set seed")
    ap.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    ap.add_argument("--workers", type=int_at_least(1), default=1, help="worker processes (default 1)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="realistic",
                    help="observation preset and its default sources: realistic (HST-like PSF and noise), magnet "
                         "(the seed's noise-free, PSF-free images), galaxies (realistic, real training galaxies + "
                         "procedural), validation (realistic, validation galaxies), validation-fixed (PSF 0.08\", "
                         "S/N 50, validation galaxies), alma (ALMA-like visibilities of the galaxies sources)")
    ap.add_argument("--sources", default=None,
                    help=f"sources instead of the preset's: one of {', '.join(SOURCE_SPECS)}, or galaxy images "
                         "(folder of FITS/PNG/JPEG, .npy/.npz or .h5 array)")
    ap.add_argument("--galaxy-file", default=None,
                    help="the real-galaxy .npz (default: ../shared/data/galaxy_zoo_decals/gz_decals_400.npz or "
                         "$LENSINV_GALAXIES)")
    ap.add_argument("--store-operators", action="store_true", help="also store each lens's F L (CSR)")
    ap.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="i/k",
                    help="build only the i-th of k slices of the indices (cluster array jobs)")
    ap.add_argument("--part-size", type=int_at_least(1), default=None,
                    help="lenses per resumable part (default 32, 4 with operators)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    try:
        config = simulation_config(args.preset, args.sources, args.galaxy_file)
        lo, hi = shard_range(args.n, args.shard)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(total=hi - lo, unit="lens", desc=args.out.name) as bar:
            build_dataset(args.out, args.n, args.seed, config, workers=args.workers,
                          store_operators=args.store_operators, shard=args.shard, part_size=args.part_size,
                          progress=bar.update)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if lo == hi:
        print(f"wrote {args.out} (no lenses: shard {args.shard[0]}/{args.shard[1]} of {args.n} lenses is empty)")
    else:
        print(f"wrote {args.out} (lenses {lo}..{hi - 1} of {args.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
