#!/usr/bin/env python
"""Train the RIM on simulated lenses (streamed, or from build_operators.py files).

    python scripts/train_rim.py --device cuda --out runs/rim --steps 100000
    python scripts/train_rim.py --device cuda --out runs/rim --resume            # continue exactly
    torchrun --nproc_per_node 8 scripts/train_rim.py --device cuda --out runs/rim   # data parallel
    python scripts/train_rim.py --device cpu --data data/train.h5 --out runs/cpu --steps 200 --batch 2

Checkpoints (model, optimiser, scheduler, RNG states, config, step) go to OUT/checkpoint.pt,
losses and validation RMSE to OUT/log.csv (and TensorBoard under OUT/tb when installed).

--resume continues OUT/checkpoint.pt (an error if there is none, or if it is already at --steps).
--preset alma trains the same network on simulated ALMA-like visibilities (the RIM's likelihood gradient
from their dirty image and beam; docs/visibilities.md), e.g. from the imaging weights:

    python scripts/train_rim.py --device cpu --preset alma --init rim/weights/rim_realistic.pt --rim-steps 6 \
        --embed 16 --hidden1 64 --hidden2 16 --batch 4 --out runs/alma

--preset galaxies trains on real galaxies (lensinv.galaxies: the training split of the Galaxy Zoo file,
never its validation split; data files made from validation galaxies are refused) mixed with procedural
sources. The model, data, --preset, --seed and --batch must match the checkpoint; the optimisation settings
--lr, --decay-steps, --decay-rate, --clip and --no-amp may change: the new values apply from the
resumed step on (lr = LR * DECAY_RATE ** (step / DECAY_STEPS)), with a warning, and each change is
recorded in the checkpoint's "changes" list. A NaN or inf loss, gradient or update stops the run
(exit 1) without checkpointing it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from rim import resolve_device
from lensinv.cli import int_at_least, number_in, positive_float
from rim.model import RIMConfig
from rim.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    d, m = TrainConfig(), RIMConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or mps")
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.csv, tb/)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT/checkpoint.pt (required to exist); new --lr/--decay-*/--clip apply from "
                         "the resumed step and are recorded")
    ap.add_argument("--data", default=None, help="HDF5 file(s), comma-separated; default: simulate on the fly")
    ap.add_argument("--preset", default=d.preset, choices=["realistic", "magnet", "galaxies", "alma"],
                    help="simulated data: realistic (procedural sources), magnet (the seed's noise-free set), "
                         "galaxies (realistic observations of real galaxies of the training split, half of them, "
                         "and procedural sources; the validation galaxies are never drawn) or alma (the galaxies "
                         "sources observed as ALMA-like visibilities; the same model class runs on their dirty "
                         "image and beam)")
    ap.add_argument("--seed", type=int_at_least(0), default=d.seed, help=">= 0")
    ap.add_argument("--batch", type=int_at_least(1), default=d.batch, help="lenses per step per process (>= 1)")
    ap.add_argument("--steps", type=int_at_least(1), default=d.steps, help="total optimisation steps (>= 1)")
    ap.add_argument("--lr", type=positive_float, default=d.lr, help="initial Adam learning rate (> 0)")
    ap.add_argument("--decay-steps", type=positive_float, default=d.decay_steps, help="steps per decay factor (> 0)")
    ap.add_argument("--decay-rate", type=number_in(0.0, 1.0), default=d.decay_rate, help="lr factor per DECAY_STEPS, in (0, 1]")
    ap.add_argument("--clip", type=positive_float, default=d.clip, help="gradient-norm clipping threshold (finite, > 0)")
    ap.add_argument("--checkpoint-every", type=int_at_least(1), default=d.checkpoint_every, help="steps (>= 1)")
    ap.add_argument("--val-every", type=int_at_least(1), default=d.val_every, help="steps (>= 1)")
    ap.add_argument("--val-lenses", type=int_at_least(0), default=d.val_lenses, help=">= 0")
    ap.add_argument("--log-every", type=int_at_least(1), default=d.log_every, help="steps (>= 1)")
    ap.add_argument("--workers", type=int_at_least(0), default=d.workers, help="DataLoader processes building operators")
    ap.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on GPU")
    ap.add_argument("--no-normalize", action="store_true",
                    help="train on the data as simulated, without dividing each lens by its robust image scale as "
                         "reconstruct() does (only to resume runs made before normalisation existed)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (a checkpoint or exported weights of the same architecture, e.g. "
                         "rim/weights/rim_realistic.pt with --rim-steps 6 --embed 16 --hidden1 64 --hidden2 16)")
    ap.add_argument("--rim-steps", type=int_at_least(1), default=m.steps, help="unrolled iterations T")
    ap.add_argument("--embed", type=int_at_least(1), default=m.embed)
    ap.add_argument("--hidden1", type=int_at_least(1), default=m.hidden1)
    ap.add_argument("--hidden2", type=int_at_least(1), default=m.hidden2)
    ap.add_argument("--no-downsample", action="store_true")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} exists and is not a directory (the run folder)")
    if args.resume and not (args.out / "checkpoint.pt").is_file():
        ap.error(f"--resume: there is no checkpoint {args.out / 'checkpoint.pt'} to continue (drop --resume to "
                 f"start afresh)")
    try:
        resolve_device(args.device)
    except ValueError as exc:
        ap.error(f"--device: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = RIMConfig(steps=args.rim_steps, embed=args.embed, hidden1=args.hidden1, hidden2=args.hidden2,
                          downsample=not args.no_downsample)
        config = TrainConfig(preset=args.preset, data=args.data, seed=args.seed, batch=args.batch, steps=args.steps,
                             lr=args.lr, decay_steps=args.decay_steps, decay_rate=args.decay_rate, clip=args.clip,
                             checkpoint_every=args.checkpoint_every, val_every=args.val_every,
                             val_lenses=args.val_lenses, log_every=args.log_every, workers=args.workers,
                             amp=not args.no_amp, normalize=not args.no_normalize, model=model,
                             init=None if args.init is None else str(args.init))
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

        stop = _stop_on_signals()
        train(config, args.out, device=args.device, resume=args.resume, progress=progress, stop=stop)
        if stop():
            print(f"stopped by {stop.signal_name} after a checkpoint: continue with --resume", file=sys.stderr)
            return 130
        if bar is not None:
            bar.close()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    return 0


def _stop_on_signals():
    """A ``stop()`` for ``rim.train.train`` that turns True on the first SIGTERM or SIGINT (e.g. from
    ``timeout`` or Ctrl-C: the run finishes its step, checkpoints it and ends); a second signal
    interrupts at once. Its ``signal_name`` attribute names the signal."""
    def stop() -> bool:
        return stop.signal_name is not None

    def handler(signum, frame):
        if stop.signal_name is not None:  # a second signal: do not wait for the step
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    stop.signal_name = None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


if __name__ == "__main__":
    sys.exit(main())
