#!/usr/bin/env python
"""Export a training checkpoint as shippable RIM weights (model only) with a model card.

    python scripts/export_weights.py --checkpoint runs/rim/checkpoint.pt --out rim/weights/rim_realistic.pt \
        [--summary results/demo/summary.json] [--notes "..."]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rim.train import export_weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summary", type=Path, default=None, help="summary.json of compare_baselines.py (metrics)")
    ap.add_argument("--notes", default="", help="free text for the model card")
    args = ap.parse_args(argv)
    try:
        metrics = None
        if args.summary is not None:
            s = json.loads(args.summary.read_text())
            metrics = {"n_lenses": s["n_lenses"], "data": s["data"],
                       **{f"{m}_{k}_median": v[k]["median"] for m, v in s["methods"].items()
                          for k in ("rmse", "flux_error") if v[k] is not None}}
        path = export_weights(args.checkpoint, args.out, args.notes, metrics)
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
