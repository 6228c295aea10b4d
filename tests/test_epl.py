"""The elliptical power law: lenstronomy's EPL, the SIE at slope 2, finite at the centre and at q = 1."""

import numpy as np
import pytest

import lensinv
from lensinv import EPL, SIE, ExternalShear, Lens


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-3.0, 3.0, size=(2, 4000))
    return x, y


@pytest.mark.parametrize("gamma", [1.6, 1.8, 2.0, 2.2, 2.5])
@pytest.mark.parametrize("q", [0.3, 0.55, 0.8, 1.0])
def test_matches_lenstronomy(points, gamma, q):
    LensModel = pytest.importorskip("lenstronomy.LensModel.lens_model").LensModel
    x, y = points
    epl = EPL(theta_E=1.3, gamma=gamma, q=q, phi=0.7, center=(0.12, -0.08))
    name, kwargs = epl.to_lenstronomy()
    ref = LensModel([name]).alpha(x, y, [kwargs])
    ours = epl.deflection(x, y)
    assert np.max(np.abs(np.subtract(ours, ref))) <= 1e-6 * epl.theta_E
    back = Lens.from_lenstronomy([name], [kwargs]).components[0]
    np.testing.assert_allclose([back.theta_E, back.gamma, back.q], [1.3, gamma, q], rtol=1e-12)


@pytest.mark.parametrize("q", [0.25, 0.6, 1.0])
def test_slope_two_is_the_sie(points, q):
    x, y = points
    a = EPL(1.1, 2.0, q, -0.4, (0.05, 0.1)).deflection(x, y)
    b = SIE(1.1, q, -0.4, (0.05, 0.1)).deflection(x, y)
    assert np.max(np.abs(np.subtract(a, b))) <= 1e-8


def test_circular_power_law_is_analytic():
    # q = 1: alpha = theta_E (r / theta_E)^(2 - gamma) along the radius (mass inside r ~ r^(3-gamma))
    r = np.array([0.1, 0.5, 1.0, 2.0])
    for gamma in (1.7, 2.3):
        ax, ay = EPL(1.0, gamma, 1.0).deflection(r, np.zeros_like(r))
        np.testing.assert_allclose(ax, r ** (2.0 - gamma), rtol=1e-13)
        np.testing.assert_allclose(ay, 0.0, atol=1e-15)
    assert EPL(1.0, 2.0).deflection(np.array([1.0]), np.array([0.0]))[0][0] == pytest.approx(1.0, abs=1e-15)


def test_finite_at_the_centre_and_in_a_lens():
    for q in (0.4, 1.0):
        ax, ay = EPL(1.0, 2.4, q, 0.3, (0.2, 0.2)).deflection(np.array([0.2]), np.array([0.2]))
        assert ax[0] == 0.0 and ay[0] == 0.0
    lens = Lens(EPL(1.2, 2.1, 0.7, 0.3), ExternalShear(0.04, 1.0))
    op = lensinv.operator(lens, lensinv.ImageGrid(48, 0.1), lensinv.SourceGrid(24, 1.5))
    assert op.L.nnz > 0 and np.all(np.isfinite(op.L.data))
    assert Lens.from_records(lens.to_records()) == lens


@pytest.mark.parametrize("kwargs, name", [
    ({"theta_E": 1.0, "gamma": 1.0}, "gamma"), ({"theta_E": 1.0, "gamma": 3.0}, "gamma"),
    ({"theta_E": 1.0, "gamma": np.nan}, "gamma"), ({"theta_E": 1.0, "q": 0.01}, "q"),
    ({"theta_E": 1.0, "q": 1.5}, "q"), ({"theta_E": -1.0}, "theta_E"), ({"theta_E": True}, "theta_E"),
])
def test_invalid(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EPL(**kwargs)
