"""Lens prior, presets and simulate()."""

import math

import numpy as np
import pytest

from lensinv import ImageGrid, SourceGrid
from lensinv.simulate import PRESETS, LensPrior, ObservationPreset, SimulationConfig, magnification, simulate

SMALL = ObservationPreset(name="small", image_grid=ImageGrid(64, 0.1), source_grid=SourceGrid(32, 1.5),
                          supersample=2, psf_fwhm=(0.1, 0.3), psf_size=9, snr=(10.0, 200.0))


def test_lens_prior_ranges(rng):
    prior = LensPrior()
    lenses = [prior.draw(rng) for _ in range(500)]
    te = np.array([l.components[0].theta_E for l in lenses])
    q = np.array([l.components[0].q for l in lenses])
    g = np.array([l.components[1].gamma for l in lenses])
    phi = np.array([l.components[0].phi for l in lenses])
    assert 0.1 <= te.min() and te.max() <= 3.0 and te.max() - te.min() > 2.5
    assert q.min() >= prior.q_min and q.max() <= 1.0 and q.min() < 0.3
    assert 0.0 <= g.min() and g.max() <= 0.2
    assert 0.0 <= phi.min() and phi.max() < 2 * np.pi and phi.max() - phi.min() > 5.5
    # ellipticity 1 - q is uniform on [0, 1 - q_min]
    assert abs(np.mean(1 - q) - (1 - prior.q_min) / 2) < 0.04


def test_seed_presets():
    m, r = PRESETS["magnet"], PRESETS["realistic"]
    assert m.psf_fwhm is None and m.snr is None
    assert m.image_grid == ImageGrid(192, 0.04) and m.source_grid == SourceGrid(64, 1.5)
    assert r.psf_fwhm == (0.05, 0.15) and r.snr == (10.0, 200.0)


def test_simulate_realistic_observation_model():
    cfg = SimulationConfig(preset=SMALL)
    for i in range(6):
        sim = simulate(i, 11, cfg)
        assert sim.magnification >= 3.0
        op = sim.op
        clean = op.apply(sim.source)
        assert sim.sigma == pytest.approx(clean.max() / sim.snr)
        assert 10.0 <= sim.snr <= 200.0 and 0.1 <= sim.psf_fwhm <= 0.3
        chi2 = np.mean(((sim.image - clean) / sim.sigma) ** 2)
        assert abs(chi2 - 1) < 4 * math.sqrt(2 / clean.size)
        assert sim.psf.shape == (9, 9) and sim.psf.sum() == pytest.approx(1.0)
        # the magnification is image flux over source flux
        assert sim.magnification == pytest.approx(magnification(op.L @ sim.source.ravel(), sim.source,
                                                                SMALL.image_grid, SMALL.source_grid))


def test_simulate_is_a_function_of_seed_and_index():
    cfg = SimulationConfig(preset=SMALL)
    a, b, c = simulate(4, 2, cfg), simulate(4, 2, cfg), simulate(5, 2, cfg)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.source, b.source)
    assert not np.array_equal(a.source, c.source)


def test_magnet_preset_is_noise_and_psf_free():
    pre = ObservationPreset(name="m", image_grid=ImageGrid(64, 0.1), source_grid=SourceGrid(32, 1.5), supersample=2)
    sim = simulate(0, 1, SimulationConfig(preset=pre))
    assert sim.sigma == 0.0 and sim.psf is None and math.isinf(sim.snr)
    np.testing.assert_array_equal(sim.image, sim.op.apply(sim.source))


def test_rejection_raises_when_impossible():
    prior = LensPrior(theta_E=(0.1, 0.1), min_magnification=1e6, max_tries=3)
    with pytest.raises(RuntimeError, match="3 tries"):
        simulate(0, 0, SimulationConfig(preset=SMALL, lens_prior=prior))


@pytest.mark.parametrize("kwargs, name", [({"theta_E": (0.0, 1.0)}, "theta_E"), ({"q_min": 0.0}, "q_min"),
                                          ({"gamma": (-0.1, 0.2)}, "gamma"), ({"max_tries": 0}, "max_tries")])
def test_invalid_lens_prior(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LensPrior(**kwargs)


@pytest.mark.parametrize("kwargs, name", [({"psf_fwhm": (0.2, 0.1)}, "psf_fwhm"), ({"psf_size": 8}, "psf_size"),
                                          ({"snr": (0.0, 10.0)}, "snr"), ({"supersample": 0}, "supersample")])
def test_invalid_preset(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ObservationPreset(name="x", **kwargs)
