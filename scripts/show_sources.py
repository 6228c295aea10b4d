#!/usr/bin/env python
"""Save a PNG grid of prepared real-galaxy sources (the training split, as the `galaxies` preset draws them).

    python scripts/show_sources.py --out docs/sources.png [--n 32] [--seed 0] [--split train]

Each panel is one draw (random galaxy, rotation, flip, zoom, shift and stretch) on the default
64x64, 1.5 arcsec source grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lensinv.galaxies import RealGalaxySources  # noqa: E402
from lensinv.grids import SourceGrid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="PNG file")
    ap.add_argument("--n", type=int, default=32, help="panels (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["train", "validation"], default="train")
    ap.add_argument("--galaxy-file", default=None, help="default: ../shared/data/galaxy_zoo_decals/gz_decals_400.npz")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("argument --n: must be >= 1")
    try:
        src = RealGalaxySources(path=args.galaxy_file, split=args.split)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    grid = SourceGrid()
    ncol = min(8, args.n)
    nrow = -(-args.n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 1.6 * nrow), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < args.n:
            ax.imshow(src.draw(np.random.default_rng([args.seed, k]), grid), origin="lower", cmap="magma",
                      extent=grid.extent, vmin=0, vmax=1)
    fig.suptitle(f"real-galaxy sources ({args.split} split), {grid.fov:g}\" across", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
