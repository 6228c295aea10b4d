"""baselines.arc_mask and region_mask: what they keep, and their argument checks."""

import re

import numpy as np
import pytest

import baselines
import lensinv


@pytest.fixture
def arc(rng: np.random.Generator) -> np.ndarray:
    img = rng.normal(size=(32, 32))
    img[10:14, 6:26] += 4.0
    return img


def test_keeps_the_arc_and_grows(arc):
    m0 = baselines.arc_mask(arc, 1.0, grow=0)
    assert m0.dtype == bool and m0.shape == arc.shape
    assert m0[10:14, 8:24].all() and m0.sum() < 0.3 * m0.size
    m2 = baselines.arc_mask(arc, 1.0, grow=2)
    assert (m2 >= m0).all() and m2.sum() > m0.sum()
    # a sigma map equal to the scalar gives the same mask; a huge grow covers everything
    assert (baselines.arc_mask(arc, np.ones(arc.shape), grow=2) == m2).all()
    assert baselines.arc_mask(arc, 1.0, grow=10**9).all()
    assert not baselines.arc_mask(np.zeros((8, 8)), 1.0).any()


@pytest.mark.parametrize("kwargs, name", [
    ({"sigma": np.ones((31, 32))}, "sigma"),  # used to be a numpy broadcast error
    ({"sigma": np.ones(32 * 32)}, "sigma"),
    ({"grow": -1}, "grow"), ({"smooth": -1.0}, "smooth"),  # used to mean 0 silently
    ({"nsigma": np.nan}, "nsigma"),  # used to give an empty mask silently
    ({"grow": 2.5}, "grow"),  # used to be a TypeError from numpy
    ({"grow": True}, "grow"), ({"nsigma": np.inf}, "nsigma"), ({"nsigma": -3.0}, "nsigma"),
    ({"nsigma": "3"}, "nsigma"), ({"smooth": np.inf}, "smooth"), ({"smooth": 1e6}, "smooth"),
    ({"sigma": 0.0}, "sigma"), ({"sigma": np.nan}, "sigma"), ({"sigma": True}, "sigma"), ({"sigma": "1"}, "sigma"),
    ({"sigma": 1j}, "sigma"), ({"sigma": np.full((32, 32), -1.0)}, "sigma"), ({"sigma": np.full((32, 32), 1j)}, "sigma"),
])
def test_bad_arguments_are_named(arc, kwargs, name):
    kw = {"sigma": 1.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        baselines.arc_mask(arc, **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(arc, bad):
    arc[3, 4] = bad
    with pytest.raises(ValueError, match="image"):
        baselines.arc_mask(arc, 1.0)


@pytest.mark.parametrize("image", [np.ones(16), np.ones((2, 4, 4)), np.zeros((0, 4)), "abc", np.ones((4, 4)) * 1j])
def test_bad_images_are_named(image):
    with pytest.raises(ValueError, match="image"):
        baselines.arc_mask(image, 1.0)


# -- region_mask / sky_offsets: discs (interlopers) and an annulus in arcsec -----------------------


def test_sky_offsets_match_the_image_grid():
    x, y = baselines.sky_offsets((9, 9), 0.05)
    gx, gy = lensinv.ImageGrid(9, 0.05).coordinates()
    np.testing.assert_allclose(x, gx)
    np.testing.assert_allclose(y, gy)
    x, y = baselines.sky_offsets((4, 6), 1.0)  # non-square, even sides: the centre between pixels
    np.testing.assert_allclose(x[0], [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    np.testing.assert_allclose(y[:, 0], [-1.5, -0.5, 0.5, 1.5])


def test_region_mask_masks_discs_and_keeps_an_annulus():
    shape, d = (41, 51), 0.1
    x, y = baselines.sky_offsets(shape, d)
    use = baselines.region_mask(shape, d, circles=[(1.0, -0.5, 0.35), (-2.0, 1.5, 0.25)])
    inside = (np.hypot(x - 1.0, y + 0.5) <= 0.35) | (np.hypot(x + 2.0, y - 1.5) <= 0.25)
    np.testing.assert_array_equal(use, ~inside)
    # the disc about (1.0, -0.5): column 35 (x = 1.0), row 15 (y = -0.5) is masked, 4 pixels away is not
    assert not use[15, 35] and use[15, 39] and use[19, 35]
    ring = baselines.region_mask(shape, d, annulus=(0.5, 1.5))
    r = np.hypot(x, y)
    np.testing.assert_array_equal(ring, (r >= 0.5) & (r < 1.5))
    both = baselines.region_mask(shape, d, circles=[(1.0, -0.5, 0.35)], annulus=(0.5, 1.5))
    np.testing.assert_array_equal(both, ring & (np.hypot(x - 1.0, y + 0.5) > 0.35))
    assert baselines.region_mask(shape, d).all()


@pytest.mark.parametrize("kwargs, word", [
    (dict(circles=[(0.0, 0.0)]), "circles[0]"),
    (dict(circles=[(0.0, 0.0, 0.0)]), "circles[0] r"),
    (dict(circles=[(0.0, float("nan"), 1.0)]), "circles[0] y"),
    (dict(annulus=(1.0, 0.5)), "annulus"),
    (dict(annulus=(-0.1, 0.5)), "annulus"),
    (dict(annulus=(0.1,)), "annulus"),
])
def test_region_mask_names_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=re.escape(word)):
        baselines.region_mask((8, 8), 0.1, **kwargs)
    with pytest.raises(ValueError, match="pixel_scale"):
        baselines.region_mask((8, 8), 0.0)
