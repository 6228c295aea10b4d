"""benchmarks/rim_inference.py: the rows it reports (a one-lens smoke run of two methods)."""

import numpy as np

from .conftest import benchmark_module


def test_rows_are_medians_relative_to_the_peer():
    mod = benchmark_module("rim_inference")
    import rim

    funcs = mod.methods(rim.load_pretrained())
    assert list(funcs)[0].endswith("(peer)") and len(funcs) == 9
    assert sum("(default)" in k for k in funcs) == 2
    cases = mod.lenses(None, 1, 3)
    picked = {k: funcs[k] for k in list(funcs)[:2]}
    rows = mod.measure(cases, picked)
    assert [r.name for r in rows] == list(picked)
    assert rows[0].ratio == 1.0 and all(r.seconds > 0 and np.isfinite(r.ratio) for r in rows)
    # RIM+WD's estimate is a finite source on the lens's grid
    op, image, sigma = cases[0]
    res = funcs[f"RIM+WD, {rim.DEFAULT_TRANSFORMS} symmetries, curvature, arc mask"](op, image, sigma)
    assert res.source.shape == (op.source_grid.n, op.source_grid.n) and np.all(np.isfinite(res.source))
