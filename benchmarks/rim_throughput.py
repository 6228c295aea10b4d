#!/usr/bin/env python
"""RIM throughput: lenses/s for training and inference at the seed's model size (T = 10),
and the data pipeline's lenses/s per worker process (simulation + operator F L).

    python benchmarks/rim_throughput.py --device cpu [--batch 4] [--repeats 3]
    python benchmarks/rim_throughput.py --device cuda --batch 64

Targets (issue 5, one H100): training >= 500 lenses/s, inference >= 3,000 lenses/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lensinv.simulate import PRESETS, SimulationConfig, simulate
from rim import RIM, BatchedOperator, RIMConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = SimulationConfig(preset=PRESETS["realistic"])

    simulate(0, 0, cfg)  # compile
    t0 = time.perf_counter()
    sims = [simulate(i, 0, cfg) for i in range(args.batch)]
    t_data = (time.perf_counter() - t0) / args.batch
    print(f"data: simulate (source, L, blurred noisy image) {1 / t_data:.1f} lenses/s per process "
          f"({t_data * 1e3:.0f} ms/lens)")

    model = RIM(RIMConfig()).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    op = BatchedOperator.from_scipy([s.op.L for s in sims], 192, 64, device=dev, psfs=[s.op.psf for s in sims])
    img = torch.tensor(np.stack([s.image for s in sims]), dtype=torch.float32, device=dev)
    src = torch.tensor(np.stack([s.source for s in sims]), dtype=torch.float32, device=dev)
    sig = torch.tensor([s.sigma for s in sims], dtype=torch.float32, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = sum(((e.float() - src) ** 2).sum(dim=(1, 2)).mean() for e in model(img, op, sig))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.amp):
            model(img, op, sig)

    for name, fn in (("training", train_step), ("inference", infer)):
        fn()
        sync()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        print(f"{name}: {args.batch / np.median(times):.2f} lenses/s on {args.device} (batch {args.batch}, "
              f"{sum(p.numel() for p in model.parameters())} parameters, T=10)")


if __name__ == "__main__":
    main()
