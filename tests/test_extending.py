"""docs/extending.md's examples work as written: a new mass profile and a new regularization in one
file each, with no change to lensinv or baselines."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import baselines
import lensinv

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _import(code: str, tmp_path: Path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_point_mass_of_the_docs(tmp_path):
    mod = _import(_blocks()[0], tmp_path, "doc_point_mass")
    pm = mod.PointMass(0.5, (0.1, 0.0))
    # analytic: alpha = theta_E^2 / r along the radius
    ax, ay = pm.deflection(np.array([1.1, 0.1]), np.array([0.0, 2.0]))
    np.testing.assert_allclose([ax[0], ay[1]], [0.25, 0.125], rtol=1e-14)
    lens = lensinv.Lens(mod.PointMass(0.3), lensinv.SIE(1.0, 0.8))
    op = lensinv.operator(lens, lensinv.ImageGrid(32, 0.1), lensinv.SourceGrid(16, 1.5), supersample=1)
    assert op.L.nnz > 0
    assert lensinv.Lens.from_records(lens.to_records()) == lens
    assert lensinv.mass.profile_class("POINT_MASS") is mod.PointMass
    LensModel = pytest.importorskip("lenstronomy.LensModel.lens_model").LensModel
    x, y = np.random.default_rng(2).uniform(-2, 2, (2, 500))
    ref = LensModel(["POINT_MASS"]).alpha(x, y, [pm.to_lenstronomy()[1]])
    np.testing.assert_allclose(pm.deflection(x, y), ref, rtol=1e-10, atol=1e-12)


def test_the_regularization_of_the_docs(tmp_path):
    mod = _import(_blocks()[1], tmp_path, "doc_regularization")
    op = lensinv.operator(lensinv.Lens(lensinv.SIE(0.6, 0.8)), lensinv.ImageGrid(32, 0.05), lensinv.SourceGrid(10, 0.8))
    d = op.apply(np.ones(100)) + np.random.default_rng(1).normal(0, 0.02, op.shape[0])
    a = baselines.invert(op, d, 0.02, regularization=mod.Weighted(3.0), lam=1.0)
    b = baselines.invert(op, d, 0.02, regularization="zeroth", lam=3.0)  # 3 I at lam 1 == I at lam 3
    np.testing.assert_allclose(a.source, b.source, rtol=1e-10)
    assert a.regularization == "weighted" and "weighted" in baselines.regularization.forms()
    assert baselines.invert(op, d, 0.02, regularization="weighted").status == "converged"
