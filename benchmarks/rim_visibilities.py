#!/usr/bin/env python
"""Cost of the RIM's physics on visibilities (the alma preset) against imaging, per lens and step.

    OMP_NUM_THREADS=1 python benchmarks/rim_visibilities.py [--batch 4] [--repeats 5] [--device cpu] [--threads 1]

Prints, per lens, the time of one likelihood gradient (what each RIM step calls):

1. imaging (realistic preset: L and a 15x15 PSF as a grouped convolution);
2. visibilities by the dirty-beam route (rim.physics.BatchedVisibilityOperator: L, the primary
   beam and one zero-padded 384^2 FFT convolution), float32;
3. the route it replaces: one NUFFT forwards and one back per step (finufft type 2 + type 1 at
   eps 1e-6, about float32's precision, on the CPU), at the preset's visibilities and at 10x
   them, which is what a torch NUFFT (torchkbnufft, cufinufft; not installed here) would do in
   the loop: its cost grows with the number of visibilities;
4. the one-off data cost of an alma lens (simulation: L, one NUFFT forwards and two back) and a
   full forward of the shipped reduced RIM (T=6) on each physics.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import lensinv
from lensinv.simulate import PRESETS, simulate, simulation_config
from rim import RIM, RIMConfig
from rim.data import collate, sample, to_device


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (finufft's: set OMP_NUM_THREADS)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    b = args.batch
    batches, t_sim = {}, {}
    for name in ("realistic", "alma"):
        cfg = simulation_config(name, "procedural")
        simulate(0, 0, cfg)  # compile, coverage
        t0 = time.perf_counter()
        sims = [simulate(i, 0, cfg) for i in range(1, b + 1)]
        t_sim[name] = (time.perf_counter() - t0) / b
        batches[name] = (sims, to_device(collate([sample(s) for s in sims]), 192, 64, dev))
    n_vis = PRESETS["alma"].interferometer.simulated().n_vis
    print(f"data per lens (simulation incl. L): realistic {t_sim['realistic'] * 1e3:.0f} ms, alma "
          f"{t_sim['alma'] * 1e3:.0f} ms ({n_vis} visibilities)")
    s = torch.rand(b, 64, 64, device=dev)
    per = {}
    for name, (_, (_, img, sig, op)) in batches.items():
        per[name] = timed(lambda: op.chi2_gradient(s, img, sig), args.repeats) / b
    _, (_, img, _, vop) = batches["alma"]
    x = torch.rand(b, 192, 192, device=dev)
    t_conv = timed(lambda: vop.beam_convolve(x), args.repeats) / b
    t_lens = timed(lambda: vop.adjoint(vop.apply(s)), args.repeats) / b
    print(f"likelihood gradient per lens and step ({args.device}, {args.threads} thread(s), batch {b}): imaging "
          f"{per['realistic'] * 1e3:.1f} ms; visibilities (dirty-beam route) {per['alma'] * 1e3:.1f} ms "
          f"(L and L^T {t_lens * 1e3:.1f} ms, beam convolution {t_conv * 1e3:.1f} ms)")
    sims = batches["alma"][0]
    op0 = sims[0].op
    img0 = op0.image(sims[0].source)
    for factor in (1, 10):  # 10x: the same tracks at 10 slightly scaled copies (more channels)
        uv = np.tile(op0.uv, (factor, 1)) * (1 + 1e-3 * np.arange(factor).repeat(op0.uv.shape[0]))[:, None]
        nufft = lensinv.visibility_operator(op0.lens, uv, op0.image_grid, op0.source_grid, supersample=1, eps=1e-6)
        t = timed(lambda: nufft.fourier_adjoint(nufft.fourier(img0)), args.repeats)
        print(f"NUFFT route instead: type 2 + type 1 of {uv.shape[0]} visibilities {t * 1e3:.1f} ms per lens and step "
              f"(plus L and L^T)")
    model = RIM(RIMConfig(steps=6, embed=16, hidden1=64, hidden2=16)).to(dev).eval()
    for name, (_, (_, img, sig, op)) in batches.items():
        with torch.no_grad():
            t = timed(lambda: model(img, op, sig), max(1, args.repeats // 2)) / b
        print(f"reduced RIM (T=6) forward, {name}: {t * 1e3:.0f} ms per lens")


if __name__ == "__main__":
    main()
