"""Shared fixtures and independent reference implementations for the tests."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import scipy.sparse as sp

import lensinv


def pytest_collection_modifyitems(config, items) -> None:
    """The tests marked ``slow`` first (stable otherwise): pytest-xdist hands out tests in
    collection order, and a worker that draws a minute-long test last keeps the others idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


def reference_lensing_matrix(lens: lensinv.Lens, image_grid: lensinv.ImageGrid, source_grid: lensinv.SourceGrid,
                             supersample: int) -> sp.csr_matrix:
    """Plain NumPy/COO build of L from DESIGN.md's words (slow, independent of the Numba kernel)."""
    n, ss = image_grid.n, supersample
    off = (np.arange(ss) + 0.5) / ss - 0.5
    i, j, a, b = np.meshgrid(np.arange(n), np.arange(n), np.arange(ss), np.arange(ss), indexing="ij")
    y = (i - (n - 1) / 2 + off[a]) * image_grid.delta
    x = (j - (n - 1) / 2 + off[b]) * image_grid.delta
    bx, by = lens.raytrace(x, y)
    fx = bx / source_grid.delta + (source_grid.n - 1) / 2
    fy = by / source_grid.delta + (source_grid.n - 1) / 2
    j0, i0 = np.floor(fx), np.floor(fy)
    tx, ty = fx - j0, fy - i0
    rows, cols, vals = [], [], []
    for di in (0, 1):
        for dj in (0, 1):
            ii, jj = i0 + di, j0 + dj
            w = (ty if di else 1 - ty) * (tx if dj else 1 - tx)
            ok = (ii >= 0) & (ii < source_grid.n) & (jj >= 0) & (jj < source_grid.n) & (w > 0)
            rows.append((i * n + j)[ok])
            cols.append((ii * source_grid.n + jj)[ok].astype(np.int64))
            vals.append(w[ok] / ss**2)
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(image_grid.size, source_grid.size)).tocsr()
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def dot_test(apply, adjoint, n_in: int, n_out: int, rng: np.random.Generator) -> float:
    """Relative mismatch of <A x, y> and <x, A^T y> for random x, y."""
    x = rng.normal(size=n_in)
    y = rng.normal(size=n_out)
    lhs = float(np.dot(apply(x), y))
    rhs = float(np.dot(x, adjoint(y)))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs))


def random_lens(rng: np.random.Generator, q: float | None = None) -> lensinv.Lens:
    return lensinv.Lens(
        lensinv.SIE(theta_E=rng.uniform(0.3, 2.5), q=rng.uniform(0.2, 1.0) if q is None else q,
                    phi=rng.uniform(0, 2 * np.pi), center=tuple(rng.normal(0, 0.05, 2))),
        lensinv.ExternalShear(gamma=rng.uniform(0, 0.2), phi=rng.uniform(0, 2 * np.pi)),
    )


def refused(main, argv, capsys, *words) -> str:
    """``main(argv)`` of a script exits 2 (argparse or a ValueError) naming every word on stderr, with no
    traceback; returns stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    for w in words:
        assert w in err, err
    return err


def script_module(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` of this checkout as a module (scripts are not a package)."""
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    sys.path.insert(0, scripts)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(scripts)


def benchmark_module(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` of this checkout as a module, registered in ``sys.modules``
    (its dataclasses resolve their annotations through it)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def tiny_rim_checkpoint(path: Path, image_n: int, source_n: int) -> Path:
    """An untrained tiny RIM (T = 2, 4 channels, seeded) for ``image_n`` x 0.04 arcsec images and
    ``source_n`` source pixels, saved as a train_rim.py checkpoint at ``path``."""
    import torch

    from rim import RIM, RIMConfig
    from rim.train import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3, source_n=source_n, image_n=image_n)
    model = RIM(cfg)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(path, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1, TrainConfig(model=cfg))
    return path
