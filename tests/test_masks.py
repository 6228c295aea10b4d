"""baselines.arc_mask: what it keeps, and its argument checks."""

import numpy as np
import pytest

import baselines


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
