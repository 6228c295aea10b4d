import numpy as np
import pytest

from lensinv.metrics import flux_error, reduced_chi2, rmse, ssim


def test_metrics(rng):
    t = rng.uniform(size=(32, 32))
    assert rmse(t, t) == 0 and ssim(t, t) == pytest.approx(1.0)
    assert rmse(t + 0.1, t) == pytest.approx(0.1)
    assert flux_error(1.05 * t, t) == pytest.approx(0.05)
    noisy = t + rng.normal(0, 0.3, t.shape)
    assert ssim(noisy, t) < ssim(t + rng.normal(0, 0.05, t.shape), t) < 1
    assert reduced_chi2(t + rng.normal(0, 0.2, (400, 400))[:32, :32], t, 0.2) == pytest.approx(1.0, abs=0.15)
    assert np.isnan(reduced_chi2(t, t, 0.0))
    with pytest.raises(ValueError):
        rmse(t, t[:5])
    with pytest.raises(ValueError):
        flux_error(t, np.zeros_like(t))
