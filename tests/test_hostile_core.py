"""Probe cases of lensinv's core (shared/qa/hostile-input-failures.md: rows "mass", "op", "api")."""

import numpy as np
import pytest

import lensinv
from lensinv import EPL, SIE, ExternalShear, ImageGrid, Lens, SourceGrid

IMG, SRC = ImageGrid(32, 0.1), SourceGrid(16, 1.5)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), "1.0", b"1", 1 + 0j, None, [1.0]])
def test_numbers_must_be_real_numbers(value):
    with pytest.raises(ValueError, match="theta_E"):
        SIE(theta_E=value)
    with pytest.raises(ValueError, match="theta_E"):
        EPL(theta_E=value)
    with pytest.raises(ValueError, match="gamma"):
        ExternalShear(gamma=value)


@pytest.mark.parametrize("theta_E", [100.0, 1e300])
def test_an_operator_that_maps_nothing_is_refused(theta_E):
    with pytest.raises(ValueError, match=r"no ray from the image grid .* lands on the source grid"):
        lensinv.operator(Lens(SIE(theta_E)), IMG, SRC)


def test_apply_refuses_complex_and_non_numbers():
    op = lensinv.operator(Lens(SIE(0.5)), IMG, SRC, psf=lensinv.gaussian_psf(0.2, 0.1))
    with pytest.raises(ValueError, match="source must be real"):
        op.apply(np.ones(SRC.size) + 1j)
    with pytest.raises(ValueError, match="image must be real"):
        op.adjoint(np.ones(IMG.size, dtype=complex))
    for bad in ("abc", np.array(["a"] * SRC.size), object()):
        with pytest.raises(ValueError, match="source must be an array of real numbers"):
            op.apply(bad)


def test_top_level_names():
    assert lensinv.LensDataset is lensinv.dataset.LensDataset
    assert lensinv.Observation is lensinv.simulate.Simulated is lensinv.dataset.Example
    assert {"SIE", "EPL", "SHEAR"} <= set(lensinv.mass.profiles())
    with pytest.raises(ValueError, match="unknown mass profile 'NFW'"):
        lensinv.mass.profile_class("NFW")
    with pytest.raises(ValueError, match="components must be mass profiles"):
        Lens("SIE")


def test_supersample_is_capped():
    with pytest.raises(ValueError, match="supersample must be at most 64"):
        lensinv.operator(Lens(SIE(0.5)), IMG, SRC, supersample=10**6)
    assert lensinv.operator(Lens(SIE(0.5)), IMG, SRC, supersample=8).L.nnz > 0
