#!/usr/bin/env python
"""Train the RIM on simulated lenses (streamed, or from build_operators.py files).

    python scripts/train_rim.py --device cuda --out runs/rim --steps 100000
    python scripts/train_rim.py --device cuda --out runs/rim --resume            # continue exactly
    torchrun --nproc_per_node 8 scripts/train_rim.py --device cuda --out runs/rim   # data parallel
    python scripts/train_rim.py --device cpu --data data/train.h5 --out runs/cpu --steps 200 --batch 2

Checkpoints (model, optimiser, scheduler, RNG states, config, step) go to OUT/checkpoint.pt,
losses and validation RMSE to OUT/log.csv (and TensorBoard under OUT/tb when installed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rim.model import RIMConfig
from rim.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    d, m = TrainConfig(), RIMConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.csv, tb/)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--data", default=None, help="HDF5 file(s), comma-separated; default: simulate on the fly")
    ap.add_argument("--preset", default=d.preset, choices=["realistic", "magnet"])
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--batch", type=int, default=d.batch, help="lenses per step per process")
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--decay-steps", type=float, default=d.decay_steps)
    ap.add_argument("--decay-rate", type=float, default=d.decay_rate)
    ap.add_argument("--clip", type=float, default=d.clip)
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument("--val-every", type=int, default=d.val_every)
    ap.add_argument("--val-lenses", type=int, default=d.val_lenses)
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--workers", type=int, default=d.workers, help="DataLoader processes building operators")
    ap.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on GPU")
    ap.add_argument("--rim-steps", type=int, default=m.steps, help="unrolled iterations T")
    ap.add_argument("--embed", type=int, default=m.embed)
    ap.add_argument("--hidden1", type=int, default=m.hidden1)
    ap.add_argument("--hidden2", type=int, default=m.hidden2)
    ap.add_argument("--no-downsample", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA device is available (use --device cpu)", file=sys.stderr)
            return 2
    try:
        model = RIMConfig(steps=args.rim_steps, embed=args.embed, hidden1=args.hidden1, hidden2=args.hidden2,
                          downsample=not args.no_downsample)
        config = TrainConfig(preset=args.preset, data=args.data, seed=args.seed, batch=args.batch, steps=args.steps,
                             lr=args.lr, decay_steps=args.decay_steps, decay_rate=args.decay_rate, clip=args.clip,
                             checkpoint_every=args.checkpoint_every, val_every=args.val_every,
                             val_lenses=args.val_lenses, log_every=args.log_every, workers=args.workers,
                             amp=not args.no_amp, model=model)
        rank = int(os.environ.get("RANK", "0"))
        try:  # tqdm is optional here: GPU machines may lack it
            from tqdm import tqdm

            bar = tqdm(total=config.steps, unit="step", disable=rank != 0)
        except ImportError:
            bar = None

        def progress(step: int, loss: float) -> None:
            if bar is not None:
                bar.n = step
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                bar.refresh()
            elif step % config.log_every == 0:
                print(f"step {step}/{config.steps} loss {loss:.4g}", flush=True)

        train(config, args.out, device=args.device, resume=args.resume, progress=progress)
        if bar is not None:
            bar.close()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
