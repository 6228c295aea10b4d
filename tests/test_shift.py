"""The constant-deflection profile (lenstronomy's SHIFT): analytic checks and a lenstronomy cross-check."""

import numpy as np
import pytest

import lensinv
from lensinv import SIE, Lens, Shift


def test_shift_moves_every_traced_ray_by_the_same_amount(rng):
    x, y = rng.uniform(-3, 3, size=(2, 500))
    base = Lens(SIE(1.1, 0.7, 0.4, (0.2, -0.1)))
    shifted = Lens(SIE(1.1, 0.7, 0.4, (0.2, -0.1)), Shift(0.35, -0.6))
    bx0, by0 = base.raytrace(x, y)
    bx, by = shifted.raytrace(x, y)
    np.testing.assert_allclose(bx, bx0 - 0.35, atol=1e-14)
    np.testing.assert_allclose(by, by0 + 0.6, atol=1e-14)


def test_shift_round_trips_and_refuses_non_finite_values():
    s = Shift(0.1, -0.2)
    assert Shift.from_params(s.params()) == s
    assert Shift.from_lenstronomy(*s.to_lenstronomy()) == s
    assert "SHIFT" in lensinv.mass.profiles()
    with pytest.raises(ValueError, match="alpha_y"):
        Shift(0.0, float("nan"))


def test_shift_matches_lenstronomy(rng):
    pytest.importorskip("lenstronomy")
    from lenstronomy.LensModel.lens_model import LensModel

    lens = Lens(SIE(1.0, 0.8, 0.3, (0.1, 0.2)), Shift(0.3, -0.2))
    models, kwargs = lens.to_lenstronomy()
    x, y = rng.uniform(-2, 2, size=(2, 300))
    rx, ry = LensModel(models).ray_shooting(x, y, kwargs)
    bx, by = lens.raytrace(x, y)
    np.testing.assert_allclose(bx, rx, atol=1e-7)
    np.testing.assert_allclose(by, ry, atol=1e-7)
