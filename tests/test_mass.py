"""Mass models: conventions, analytic checks and lenstronomy cross-checks."""

import dataclasses
import math

import numpy as np
import pytest

import lensinv
from lensinv import SIE, ExternalShear, Lens

from .conftest import random_lens

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402


def _lenstronomy_alpha(lens, x, y):
    models, kwargs = lens.to_lenstronomy()
    return LensModel(models).alpha(x, y, kwargs)


@pytest.mark.parametrize("q", [None, 1.0, 0.2])
def test_deflection_matches_lenstronomy(rng, q):
    for _ in range(5):
        lens = random_lens(rng, q=q)
        x, y = rng.uniform(-4, 4, size=(2, 3000))
        ax, ay = lens.deflection(x, y)
        rx, ry = _lenstronomy_alpha(lens, x, y)
        # lenstronomy's SIE carries a 1e-10 arcsec core; the agreement is at that level
        np.testing.assert_allclose(ax, rx, rtol=0, atol=1e-7)
        np.testing.assert_allclose(ay, ry, rtol=0, atol=1e-7)


def test_sis_deflection_has_modulus_theta_e(rng):
    lens = Lens(SIE(theta_E=1.37))
    x, y = rng.uniform(-3, 3, size=(2, 5000))
    ax, ay = lens.deflection(x, y)
    np.testing.assert_allclose(np.hypot(ax, ay), 1.37, rtol=1e-14)
    # and it points away from the centre
    np.testing.assert_allclose(ax * y - ay * x, 0.0, atol=1e-13)
    assert np.all(ax * x + ay * y > 0)


def test_einstein_ring_maps_to_the_centre():
    lens = Lens(SIE(theta_E=0.9))
    t = np.linspace(0, 2 * np.pi, 50)
    bx, by = lens.raytrace(0.9 * np.cos(t), 0.9 * np.sin(t))
    np.testing.assert_allclose(np.hypot(bx, by), 0.0, atol=1e-14)


@pytest.mark.parametrize("q", [1.0, 0.999999999999, 0.5, 0.05])
def test_centre_and_near_sis_are_finite(q):
    lens = Lens(SIE(theta_E=1.0, q=q, phi=0.3), ExternalShear(0.1, 0.2))
    x = np.array([0.0, 1e-300, 0.0, 1e-12, 1.0])
    y = np.array([0.0, 0.0, -1e-300, 1e-12, 0.3])
    ax, ay = lens.deflection(x, y)
    assert np.all(np.isfinite(ax)) and np.all(np.isfinite(ay))
    sie_only = Lens(SIE(theta_E=1.0, q=q, phi=0.3))
    ax0, ay0 = sie_only.deflection(np.zeros(1), np.zeros(1))
    assert ax0[0] == 0.0 and ay0[0] == 0.0  # a ray through the centre is not deflected


def test_nearly_round_sie_tends_to_sis(rng):
    x, y = rng.uniform(-2, 2, size=(2, 1000))
    a1 = Lens(SIE(1.2, q=1.0, phi=0.7)).deflection(x, y)
    a2 = Lens(SIE(1.2, q=1 - 1e-9, phi=0.7)).deflection(x, y)
    np.testing.assert_allclose(a1, a2, atol=1e-8)


def test_sie_divergence_is_twice_convergence(rng):
    """Analytic check: div(alpha) = 2 kappa with kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q))."""
    tE, q, phi = 1.3, 0.45, 0.8
    lens = Lens(SIE(tE, q=q, phi=phi))
    x, y = rng.uniform(0.3, 2.0, size=(2, 200)) * rng.choice([-1, 1], size=(2, 200))
    h = 1e-5
    dax = (lens.deflection(x + h, y)[0] - lens.deflection(x - h, y)[0]) / (2 * h)
    day = (lens.deflection(x, y + h)[1] - lens.deflection(x, y - h)[1]) / (2 * h)
    xp = math.cos(phi) * x + math.sin(phi) * y
    yp = -math.sin(phi) * x + math.cos(phi) * y
    kappa = tE / (2 * np.sqrt(q * xp**2 + yp**2 / q))
    np.testing.assert_allclose(dax + day, 2 * kappa, rtol=1e-6)
    # the curl vanishes (a deflection derived from a potential)
    dxy = (lens.deflection(x, y + h)[0] - lens.deflection(x, y - h)[0]) / (2 * h)
    dyx = (lens.deflection(x + h, y)[1] - lens.deflection(x - h, y)[1]) / (2 * h)
    np.testing.assert_allclose(dxy, dyx, atol=1e-6)


def test_major_axis_along_phi():
    """Convergence contours are elongated along phi: for the SIE the deflection
    modulus at a fixed radius is smallest along the major axis."""
    lens = Lens(SIE(1.0, q=0.5, phi=0.6))
    t = np.linspace(0, np.pi, 3601)
    ax, ay = lens.deflection(np.cos(t), np.sin(t))
    assert abs(t[np.argmin(np.hypot(ax, ay))] - 0.6) < 1e-3


def test_shear_convention():
    sh = ExternalShear(gamma=0.1, phi=0.3)
    ax, ay = Lens(sh).deflection(np.array([2.0]), np.array([-1.0]))
    g1, g2 = 0.1 * math.cos(0.6), 0.1 * math.sin(0.6)
    assert ax[0] == pytest.approx(g1 * 2 - g2 * 1, abs=1e-15)
    assert ay[0] == pytest.approx(g2 * 2 + g1 * 1, abs=1e-15)


def test_shapes_and_raytrace(rng):
    lens = random_lens(rng)
    x, y = rng.normal(size=(2, 4, 5, 3))
    ax, ay = lens.deflection(x, y)
    assert ax.shape == x.shape and ax.dtype == np.float64
    bx, by = lens.raytrace(x, y)
    np.testing.assert_array_equal(bx, x - ax)
    np.testing.assert_array_equal(by, y - ay)
    sx, sy = lens.deflection(1.0, 2.0)
    assert np.shape(sx) == () and math.isfinite(float(sx))
    with pytest.raises(ValueError, match="same shape"):
        lens.deflection(np.zeros(3), np.zeros(4))


def test_lenstronomy_round_trip(rng):
    lens = random_lens(rng)
    models, kwargs = lens.to_lenstronomy()
    assert models == ["SIE", "SHEAR"]
    back = Lens.from_lenstronomy(models, kwargs)
    for c0, c1 in zip(lens.components, back.components):
        assert type(c0) is type(c1)
        for f in (fld.name for fld in dataclasses.fields(c0)):
            a, b = np.ravel(getattr(c1, f)), np.ravel(getattr(c0, f))
            if f == "phi":  # orientations are defined modulo pi
                a, b = np.exp(2j * a), np.exp(2j * b)
            np.testing.assert_allclose(a, b, atol=1e-12)
    x, y = rng.normal(size=(2, 100))
    np.testing.assert_allclose(back.deflection(x, y), lens.deflection(x, y), atol=1e-13)
    sis = Lens.from_lenstronomy(["SIS", "SHEAR_GAMMA_PSI"], [{"theta_E": 0.8}, {"gamma_ext": 0.05, "psi_ext": 0.2}])
    assert sis.components == (SIE(0.8), ExternalShear(0.05, 0.2))
    with pytest.raises(ValueError, match="not supported"):
        Lens.from_lenstronomy(["NFW"], [{}])
    with pytest.raises(ValueError, match="ra_0"):
        Lens.from_lenstronomy(["SHEAR"], [{"gamma1": 0.1, "gamma2": 0.0, "ra_0": 0.5, "dec_0": 0.0}])


@pytest.mark.parametrize("kwargs, name", [
    ({"theta_E": 0.0}, "theta_E"), ({"theta_E": -1.0}, "theta_E"), ({"theta_E": np.nan}, "theta_E"),
    ({"theta_E": np.inf}, "theta_E"), ({"theta_E": 1.0, "q": 0.0}, "q"), ({"theta_E": 1.0, "q": 1.2}, "q"),
    ({"theta_E": 1.0, "q": np.nan}, "q"), ({"theta_E": 1.0, "phi": np.inf}, "phi"),
    ({"theta_E": 1.0, "center": (0.0, np.nan)}, "center"), ({"theta_E": 1.0, "center": 3.0}, "center"),
    ({"theta_E": "big"}, "theta_E"),
])
def test_invalid_sie(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SIE(**kwargs)


@pytest.mark.parametrize("kwargs, name", [({"gamma": -0.01}, "gamma"), ({"gamma": np.nan}, "gamma"),
                                          ({"gamma": 0.1, "phi": np.nan}, "phi")])
def test_invalid_shear(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ExternalShear(**kwargs)


def test_invalid_lens_component():
    with pytest.raises(ValueError, match="components"):
        Lens(SIE(1.0), {"theta_E": 1.0})


def test_value_error_names_value():
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\], got 1.5"):
        SIE(1.0, q=1.5)


def test_public_names():
    for name in ("ImageGrid", "SourceGrid", "SIE", "ExternalShear", "Lens", "operator", "LensOperator"):
        assert hasattr(lensinv, name)
