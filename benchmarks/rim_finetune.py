#!/usr/bin/env python
"""Per-lens fine-tuning of the RIM on the likelihood (as in Adam et al. 2023), against the plain RIM
and the defaults, on the same lenses (issue 13 asked whether it wins, and at what cost).

    python benchmarks/rim_finetune.py --data D.h5 --n 12 [--lr 1e-5] [--steps 10]

For each lens a copy of the shipped network is optimised (Adam, ``--lr``) on the reduced chi^2 of
its final estimate (one pass, the data normalised as ``RIM.reconstruct`` does) until chi2/N <= 1 or
``--steps`` updates. Rows: the RIM with one pass, the same fine-tuned, the RIM with the default
symmetry average and RIM+WD (the defaults); median source RMSE, lenses where fine-tuning helped,
and median seconds per lens (fine-tuning alone).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import baselines  # noqa: E402
import rim  # noqa: E402
from lensinv.cli import int_at_least, positive_float  # noqa: E402
from rim.model import data_scale  # noqa: E402


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned estimate and how it went."""

    source: np.ndarray
    chi2_start: float
    chi2_end: float
    updates: int
    seconds: float


def finetune(model: rim.RIM, op, image: np.ndarray, sigma: float, lr: float, steps: int) -> FineTuned:
    """Fine-tune a copy of ``model`` on one lens's likelihood (see the module docstring); ``op`` a
    :class:`lensinv.LensOperator`, ``sigma`` a scalar."""
    c = model.config
    t0 = time.perf_counter()
    k = float(data_scale(torch.as_tensor(image)[None])[0])  # RIM.reconstruct's normalisation
    bop = rim.BatchedOperator.from_scipy([op.L], c.image_n, c.source_n, psfs=[op.psf])
    x = torch.as_tensor(image / k, dtype=torch.float32)[None]
    sig = sigma / k
    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = []
    for update in range(steps + 1):
        est = net(x, bop, torch.ones(1))[-1]
        chi2 = (((bop.apply(est) - x) / sig) ** 2).mean()
        history.append(float(chi2.detach()))
        if update == steps or history[-1] <= 1.0:
            break
        opt.zero_grad()
        chi2.backward()
        opt.step()
    return FineTuned(est.detach()[0].double().numpy() * k, history[0], history[-1], len(history) - 1,
                     time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a build_operators.py file")
    ap.add_argument("--n", type=int_at_least(1), default=12, help="lenses (>= 1, default 12)")
    ap.add_argument("--lr", type=positive_float, default=1e-5, help="Adam learning rate (default 1e-5)")
    ap.add_argument("--steps", type=int_at_least(1), default=10, help="at most this many updates (default 10)")
    args = ap.parse_args(argv)
    from lensinv.dataset import LensDataset

    ds = LensDataset(args.data)
    model = rim.load_pretrained()
    rows = {"RIM, one pass": [], "RIM, one pass, fine-tuned": [], "RIM (default)": [], "RIM+WD (default)": []}
    seconds = []
    for i in range(min(args.n, len(ds))):
        ex = ds[i]
        op, truth, sigma = ex.operator(), ex.source, float(np.median(ex.sigma))
        one = model.reconstruct(op, ex.data, ex.sigma, transforms=1)
        ft = finetune(model, op, ex.data, sigma, args.lr, args.steps)
        default = model.reconstruct(op, ex.data, ex.sigma)
        both = baselines.invert_by_evidence(op, ex.data, ex.sigma, prior_mean=default, select="binned").source
        for name, s in zip(rows, (one, ft.source, default, both)):
            rows[name].append(float(np.sqrt(np.mean((s - truth) ** 2))))
        seconds.append(ft.seconds)
        print(f"lens {i}: chi2/N {ft.chi2_start:.4f} -> {ft.chi2_end:.4f} in {ft.updates} updates, {ft.seconds:.1f} s; "
              f"RMSE {rows['RIM, one pass'][-1]:.5f} -> {rows['RIM, one pass, fine-tuned'][-1]:.5f}", flush=True)
    helped = sum(b < a for a, b in zip(rows["RIM, one pass"], rows["RIM, one pass, fine-tuned"]))
    print(f"torch threads {torch.get_num_threads()}; fine-tuning helped on {helped} of {len(seconds)} lenses, "
          f"median {np.median(seconds):.2f} s per lens (max {max(seconds):.1f} s)")
    print("| method | median source RMSE |")
    print("| --- | --- |")
    for name, v in rows.items():
        print(f"| {name} | {np.median(v):.5f} |")


if __name__ == "__main__":
    main()
