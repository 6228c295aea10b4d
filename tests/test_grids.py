import numpy as np
import pytest

from lensinv import ImageGrid, SourceGrid


def test_pixel_centres_follow_design_convention():
    g = ImageGrid(n=4, pixel_scale=0.5)
    x, y = g.coordinates()
    # x along columns, y along rows, centred on the origin
    np.testing.assert_allclose(x[0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(y[:, 0], [-0.75, -0.25, 0.25, 0.75])
    i, j = 2, 3
    assert x.ravel()[i * 4 + j] == (j - 1.5) * 0.5 and y.ravel()[i * 4 + j] == (i - 1.5) * 0.5
    assert g.extent == (-1.0, 1.0, -1.0, 1.0)
    assert g.fov == 2.0 and g.size == 16 and g.shape == (4, 4)


def test_defaults_are_the_seeds_grids():
    assert ImageGrid().n == 192 and ImageGrid().pixel_scale == 0.04
    s = SourceGrid()
    assert s.n == 64 and s.fov == 1.5 and s.delta == pytest.approx(1.5 / 64)
    x, _ = s.coordinates()
    assert x[0, -1] == pytest.approx(-x[0, 0]) and x[0, 1] - x[0, 0] == pytest.approx(s.delta)


@pytest.mark.parametrize("cls, kwargs, name", [
    (ImageGrid, {"n": 1}, "n"), (ImageGrid, {"n": 2.5}, "n"), (ImageGrid, {"n": True}, "n"),
    (ImageGrid, {"pixel_scale": 0.0}, "pixel_scale"), (ImageGrid, {"pixel_scale": -0.1}, "pixel_scale"),
    (ImageGrid, {"pixel_scale": np.nan}, "pixel_scale"), (SourceGrid, {"n": 0}, "n"),
    (SourceGrid, {"fov": 0.0}, "fov"), (SourceGrid, {"fov": np.inf}, "fov"),
])
def test_invalid_grids(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("cls, kwargs, name", [
    (SourceGrid, {"n": 8, "fov": 5e-324}, "fov"),  # fov / n underflowed to a pixel size of 0
    (ImageGrid, {"n": 16, "pixel_scale": 1.2e307}, "pixel_scale"),  # n * pixel_scale overflowed to inf
])
def test_grid_extremes_are_refused(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_grid_extremes_that_are_fine():
    g = ImageGrid(16, 5e-324)
    assert g.delta > 0 and np.all(np.isfinite(g.axis))
    s = SourceGrid(8, 1e300)
    assert np.isfinite(s.extent).all() and s.delta == pytest.approx(1.25e299)
