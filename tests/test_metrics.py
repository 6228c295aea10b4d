import math

import numpy as np
import pytest
from scipy import ndimage

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


def test_residual_coherence_white_noise_and_a_missed_arc():
    from lensinv.metrics import residual_coherence

    rng = np.random.default_rng(0)
    r = rng.normal(size=(160, 160))
    mask = np.ones(r.shape, bool)
    mask[:15] = False
    r[:15] = np.nan  # outside the mask: ignored
    yy, xx = np.indices(r.shape)
    arc = (np.abs(np.hypot(xx - 80, yy - 90) - 40) < 3) & (xx > 80)
    white = residual_coherence(r, mask, 1.5, region=arc)
    assert 0.8 < white.mean_z2 < 1.2 and white.fraction_above_3 < 0.01 and white.n_pixels == arc.sum()
    assert 0.9 < residual_coherence(r, mask, 2.0).mean_z2 < 1.1
    missed = residual_coherence(np.where(arc, r + 0.3, r), mask, 1.5, region=arc)  # 0.3 sigma per pixel
    assert missed.mean_z2 > 2.0 and missed.fraction_above_3 > 0.03
    with pytest.raises(ValueError, match="scale"):
        residual_coherence(r, mask, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        residual_coherence(r, np.ones(r.shape, bool), 1.5)
    with pytest.raises(ValueError, match="shape"):
        residual_coherence(r, mask[:10], 1.5)


def test_residual_coherence_relative_to_correlated_background_noise():
    """Correlated noise (white noise smoothed over 1.2 pixels and rescaled to unit variance, as
    drizzling correlates HST pixels) inflates the white-noise z^2 everywhere; relative to the
    background's own spread it is 1 on a fitted arc and well above 1 on a missed one (1.5 sigma)."""
    from lensinv.metrics import residual_coherence

    rng = np.random.default_rng(1)
    c = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 1.2)
    c /= c.std()
    mask = np.ones(c.shape, bool)
    yy, xx = np.indices(c.shape)
    arc = (np.abs(np.hypot(xx - 80, yy - 80) - 40) < 4) & (xx > 80)
    background = np.hypot(xx - 80, yy - 80) > 55
    fitted = residual_coherence(c, mask, 1.5, region=arc, reference=background)
    assert fitted.mean_z2 > 3.0  # the white-noise statistic alone calls the noise coherent
    assert fitted.reference_rms > 1.5 and 0.7 < fitted.mean_z2_relative < 1.4
    missed = residual_coherence(np.where(arc, c + 1.5, c), mask, 1.5, region=arc, reference=background)
    assert missed.mean_z2_relative > 2.0
    assert math.isnan(residual_coherence(c, mask, 1.5, region=arc).mean_z2_relative)
    with pytest.raises(ValueError, match="reference"):
        residual_coherence(c, mask, 1.5, region=arc, reference=np.zeros(c.shape, bool))
