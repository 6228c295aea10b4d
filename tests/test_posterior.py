"""baselines.posterior: emcee sampling of a known posterior (a correlated Gaussian, truncated by
the prior's bounds), deterministic by seed, with its inputs validated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.posterior import sample_posterior

MEAN = np.array([1.0, 2.0, -0.5])
COV = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, -0.3], [0.0, -0.3, 1.0]]) * np.outer([0.01, 0.02, 0.1], [0.01, 0.02, 0.1])
PREC = np.linalg.inv(COV)
BOUNDS = [(0.0, 3.0), (0.0, 3.0), (-2.0, 2.0)]
NAMES = ("a", "b", "c")


def log_gauss(x):
    d = np.asarray(x) - MEAN
    return -0.5 * d @ PREC @ d


def test_samples_recover_a_correlated_gaussian_and_repeat_by_seed():
    # started from a covariance 4x too wide and off-centre: the chain forgets its start
    post = sample_posterior(log_gauss, MEAN + 0.5 * np.sqrt(np.diag(COV)), 4 * COV, BOUNDS, NAMES, steps=800, seed=2)
    assert post.samples.shape == (8 * 400, 3) and post.log_posterior.shape == (8 * 400,)
    assert post.walkers == 8 and post.burn == 400 and post.converged
    assert 0.2 < post.acceptance_fraction < 0.9
    std = np.sqrt(np.diag(COV))
    assert np.all(np.abs(post.samples.mean(axis=0) - MEAN) < 0.3 * std)  # about 150 independent samples
    corr = np.cov(post.samples.T) / np.outer(std, std)  # correlation and variance ratios, within
    np.testing.assert_allclose(corr, COV / np.outer(std, std), atol=0.35)  # ~2 sigma of 120 samples
    np.testing.assert_allclose(post.log_posterior, [log_gauss(p) for p in post.samples])
    again = sample_posterior(log_gauss, MEAN + 0.5 * std, 4 * COV, BOUNDS, NAMES, steps=800, seed=2)
    np.testing.assert_array_equal(again.samples, post.samples)
    other = sample_posterior(log_gauss, MEAN + 0.5 * std, 4 * COV, BOUNDS, NAMES, steps=800, seed=3)
    assert not np.array_equal(other.samples, post.samples)


def test_the_prior_bounds_truncate_the_posterior():
    # a bound through the mean of c: a half-normal, mean 0.80 sigma above it
    bounds = BOUNDS[:2] + [(MEAN[2], 2.0)]
    x0 = MEAN + np.array([0.0, 0.0, 0.05])
    post = sample_posterior(log_gauss, x0, COV, bounds, NAMES, steps=1000, walkers=12, seed=0)
    c = post.samples[:, 2]
    sigma_c = math.sqrt(1.0 / PREC[2, 2])  # c's conditional spread given a and b
    assert c.min() >= MEAN[2]
    assert c.mean() - MEAN[2] > 0.3 * sigma_c  # untruncated: 0 (the conditional mean shifts too)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="walkers"):
        sample_posterior(log_gauss, MEAN, COV, BOUNDS, NAMES, steps=10, walkers=4)  # fewer than 2 dim + 2
    with pytest.raises(ValueError, match="even"):
        sample_posterior(log_gauss, MEAN, COV, BOUNDS, NAMES, steps=10, walkers=9)
    with pytest.raises(ValueError, match="steps"):
        sample_posterior(log_gauss, MEAN, COV, BOUNDS, NAMES, steps=1)
    with pytest.raises(ValueError, match="covariance"):
        sample_posterior(log_gauss, MEAN, COV[:2, :2], BOUNDS, NAMES, steps=10)
    with pytest.raises(ValueError, match="covariance"):
        sample_posterior(log_gauss, MEAN, np.full((3, 3), np.nan), BOUNDS, NAMES, steps=10)
    with pytest.raises(ValueError, match="inside bounds"):
        sample_posterior(log_gauss, MEAN + 10.0, COV, BOUNDS, NAMES, steps=10)
    with pytest.raises(ValueError, match="burn"):
        sample_posterior(log_gauss, MEAN, COV, BOUNDS, NAMES, steps=10, burn=1.0)
    with pytest.raises(ValueError, match="finite posterior"):
        sample_posterior(lambda x: -math.inf, MEAN, COV, BOUNDS, NAMES, steps=10)
