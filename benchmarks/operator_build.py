#!/usr/bin/env python
"""Time lensinv.operator (ray tracing + weights + CSR) against lenstronomy's ray shooting
of the same rays, in the same process; prints medians and their ratio.

    python benchmarks/operator_build.py [--repeats 21] [--lenses 5]

Target (issue 2): the whole operator >= 5x faster than lenstronomy's ray shooting alone
for a 192x192 image, 64x64 source and 4x4 sub-pixels. The same is measured for an elliptical
power law (EPL, slope 1.7-2.3) + shear against lenstronomy's EPL (closed-form hypergeometric)
and EPL_NUMBA (its series in Numba).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numba
import numpy as np

import lensinv


def subpixel_rays(grid: lensinv.ImageGrid, ss: int) -> tuple[np.ndarray, np.ndarray]:
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * grid.delta
    x, y = grid.coordinates()
    xs = (x[:, :, None, None] + off[None, None, None, :]) + 0 * off[None, None, :, None]
    ys = (y[:, :, None, None] + off[None, None, :, None]) + 0 * off[None, None, None, :]
    return xs.ravel(), ys.ravel()


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--lenses", type=int, default=5, help="random SIE + shear lenses from the seed's ranges")
    ap.add_argument("--supersample", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    from lenstronomy.LensModel.lens_model import LensModel

    image_grid, source_grid, ss = lensinv.ImageGrid(192, 0.04), lensinv.SourceGrid(64, 1.5), args.supersample
    x, y = subpixel_rays(image_grid, ss)
    rng = np.random.default_rng(args.seed)
    print(f"{platform.processor() or platform.machine()}, numba threads {numba.get_num_threads()}, "
          f"{image_grid.n}^2 image x {ss}^2 sub-pixels = {x.size} rays, {source_grid.n}^2 source")
    ratios = []
    for k in range(args.lenses):
        lens = lensinv.Lens(
            lensinv.SIE(theta_E=rng.uniform(0.5, 2.5), q=rng.uniform(0.2, 1.0), phi=rng.uniform(0, 2 * np.pi)),
            lensinv.ExternalShear(gamma=rng.uniform(0, 0.2), phi=rng.uniform(0, 2 * np.pi)))
        models, kwargs = lens.to_lenstronomy()
        lm = LensModel(models)
        lensinv.operator(lens, image_grid, source_grid, supersample=ss)  # compile / warm up
        lm.ray_shooting(x, y, kwargs)
        t_ours = median_time(lambda: lensinv.operator(lens, image_grid, source_grid, supersample=ss), args.repeats)
        t_ref = median_time(lambda: lm.ray_shooting(x, y, kwargs), args.repeats)
        ratios.append(t_ref / t_ours)
        print(f"lens {k}: lensinv.operator {t_ours * 1e3:7.2f} ms | lenstronomy ray_shooting {t_ref * 1e3:7.2f} ms "
              f"| ratio {t_ref / t_ours:5.2f}x")
    print(f"median ratio (lenstronomy ray shooting / whole lensinv operator): {statistics.median(ratios):.2f}x "
          f"(target >= 5x)")
    epl_mass_profiles(image_grid, source_grid, ss, x, y, rng, args)

    # forming F L: lensinv's kernel (straight from the PSF taps and L) against SciPy's F @ L
    from lensinv import _kernels  # noqa: PLC2701 (the benchmark times the kernel itself)

    for fwhm in (0.08, 0.15):
        psf = lensinv.gaussian_psf(fwhm, image_grid.pixel_scale)
        op = lensinv.operator(lens, image_grid, source_grid, psf=psf, supersample=ss)
        F, L = op.F, op.L
        fl = lambda: _kernels.psf_lens_csr_kernel(image_grid.n, psf, L.indptr, L.indices, L.data,  # noqa: E731
                                                  source_grid.n)
        fl()
        t_fl = median_time(fl, args.repeats)
        t_sp = median_time(lambda: F @ L, args.repeats)
        print(f"F L for a {psf.shape[0]}x{psf.shape[0]} PSF ({fwhm} arcsec FWHM, nnz {op.matrix.nnz}): "
              f"lensinv {t_fl * 1e3:6.1f} ms | scipy F @ L {t_sp * 1e3:6.1f} ms | ratio {t_sp / t_fl:4.2f}x")


def epl_mass_profiles(image_grid, source_grid, ss, x, y, rng, args) -> None:
    """The operator with an EPL + shear: lensinv against lenstronomy's EPL and EPL_NUMBA."""
    from lenstronomy.LensModel.lens_model import LensModel

    rows = []
    for k in range(args.lenses):
        lens = lensinv.Lens(
            lensinv.EPL(theta_E=rng.uniform(0.5, 2.5), gamma=rng.uniform(1.7, 2.3), q=rng.uniform(0.2, 1.0),
                        phi=rng.uniform(0, 2 * np.pi)),
            lensinv.ExternalShear(gamma=rng.uniform(0, 0.2), phi=rng.uniform(0, 2 * np.pi)))
        models, kwargs = lens.to_lenstronomy()
        lm, lm_nb = LensModel(models), LensModel(["EPL_NUMBA", "SHEAR"])
        lensinv.operator(lens, image_grid, source_grid, supersample=ss)
        lm.ray_shooting(x, y, kwargs)
        lm_nb.ray_shooting(x, y, kwargs)
        t_ours = median_time(lambda: lensinv.operator(lens, image_grid, source_grid, supersample=ss), args.repeats)
        t_ref = median_time(lambda: lm.ray_shooting(x, y, kwargs), max(3, args.repeats // 4))
        t_nb = median_time(lambda: lm_nb.ray_shooting(x, y, kwargs), args.repeats)
        rows.append((t_ours, t_ref, t_nb))
        print(f"EPL lens {k} (gamma {lens.components[0].gamma:.2f}, q {lens.components[0].q:.2f}): lensinv.operator "
              f"{t_ours * 1e3:7.2f} ms | lenstronomy EPL {t_ref * 1e3:8.1f} ms | EPL_NUMBA {t_nb * 1e3:7.2f} ms")
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(f"EPL median: lensinv.operator {med[0] * 1e3:.2f} ms; ratios lenstronomy EPL / lensinv "
          f"{statistics.median(r[1] / r[0] for r in rows):.1f}x, EPL_NUMBA / lensinv "
          f"{statistics.median(r[2] / r[0] for r in rows):.2f}x")


if __name__ == "__main__":
    main()
