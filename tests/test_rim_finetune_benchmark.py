"""benchmarks/rim_finetune.py: per-lens fine-tuning on the likelihood lowers the chi^2 it optimises."""

import numpy as np

from .conftest import benchmark_module


def test_finetuning_lowers_the_misfit_and_keeps_the_unit():
    mod = benchmark_module("rim_finetune")
    import rim
    from lensinv.simulate import PRESETS, SimulationConfig, simulate

    model = rim.load_pretrained()
    sim = simulate(0, 5, SimulationConfig(preset=PRESETS["realistic"]))
    sigma = float(np.median(sim.sigma))
    got = mod.finetune(model, sim.op, sim.image, sigma, lr=1e-4, steps=2)
    assert got.updates == 2 or got.chi2_end <= 1.0
    assert got.updates == 0 or got.chi2_end < got.chi2_start
    assert got.source.shape == (model.config.source_n,) * 2 and np.all(np.isfinite(got.source))
    # in the data's unit: images and sigma x 10 give the source x 10
    ten = mod.finetune(model, sim.op, 10 * sim.image, 10 * sigma, lr=1e-4, steps=0)
    one = mod.finetune(model, sim.op, sim.image, sigma, lr=1e-4, steps=0)
    np.testing.assert_allclose(ten.source, 10 * one.source, rtol=1e-4, atol=1e-6 * np.abs(ten.source).max())
