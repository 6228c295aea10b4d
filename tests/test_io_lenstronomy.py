"""Reading lenstronomy-style HDF5 images and PSFs (lensinv.io.read_lenstronomy_image / _psf): the noise
as lenstronomy computes it, the pixel scale from transform_pix2angle, clear errors; the shared SL2S
files where present (skipped without ../shared)."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from lensinv.io import is_hdf5, read_lenstronomy_image, read_lenstronomy_psf

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_lenses" / "sl2s_j0219-0829"
T = np.array([[-0.04, 1e-6], [2e-6, 0.04]])


def _write(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def _image_file(tmp_path: Path, rng, **override) -> tuple[Path, dict]:
    data = rng.normal(0.05, 0.1, (20, 20)).astype(np.float32)  # some negative values
    exposure = rng.uniform(100.0, 500.0, (20, 20)).astype(np.float32)
    exposure[0, 0] = 0.0  # lenstronomy floors it at 1e-10
    d = dict(image_data=data, background_rms=0.006, exposure_time=exposure, transform_pix2angle=T)
    d.update(override)
    return _write(tmp_path / "image.h5", **d), d


def test_noise_is_lenstronomys(tmp_path, rng):
    path, d = _image_file(tmp_path, rng)
    im = read_lenstronomy_image(path)
    data = d["image_data"].astype(np.float64)
    exp = np.maximum(d["exposure_time"].astype(np.float64), 1e-10)
    expected = np.sqrt(0.006**2 + np.where(data >= 0, data, 0.0) / exp)
    np.testing.assert_allclose(im.sigma, expected, rtol=1e-12)
    assert np.all(im.sigma[data < 0] == 0.006)  # no Poisson term for negative data
    assert math.isclose(im.pixel_scale, math.sqrt(abs(np.linalg.det(T))), rel_tol=1e-12)
    np.testing.assert_array_equal(im.data, data)
    lenstronomy = pytest.importorskip("lenstronomy.Data.image_noise")
    var = lenstronomy.covariance_matrix(data, 0.006, exp)
    np.testing.assert_allclose(im.sigma**2, var, rtol=1e-12)


def test_scalar_exposure_and_suffixes(tmp_path, rng):
    path, _ = _image_file(tmp_path, rng, exposure_time=400.0)
    im = read_lenstronomy_image(path)
    assert im.sigma.shape == (20, 20) and np.all(im.sigma >= 0.006)
    assert is_hdf5("a.h5") and is_hdf5("b.HDF5") and not is_hdf5("c.fits") and not is_hdf5("d.fits[VIS]")


@pytest.mark.parametrize("override, words", [
    ({"transform_pix2angle": np.array([[0.04, 0.0], [0.0, 0.05]])}, "not square"),
    ({"transform_pix2angle": np.zeros((2, 2))}, "transform_pix2angle"),
    ({"background_rms": -1.0}, "background_rms"),
    ({"exposure_time": np.ones((3, 3))}, "exposure_time"),
    ({"image_data": np.ones(5)}, "2-D"),
])
def test_bad_files_are_refused_by_name(tmp_path, rng, override, words):
    path, _ = _image_file(tmp_path, rng, **override)
    with pytest.raises(ValueError, match=words):
        read_lenstronomy_image(path, name="--image")


def test_missing_dataset_and_file(tmp_path):
    path = _write(tmp_path / "x.h5", image_data=np.ones((4, 4)))
    with pytest.raises(ValueError, match="background_rms"):
        read_lenstronomy_image(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_lenstronomy_image(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_lenstronomy_image(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="kernel_point_source"):
        read_lenstronomy_psf(path)


def test_psf(tmp_path):
    k = np.outer(np.hanning(7), np.hanning(7))
    np.testing.assert_array_equal(read_lenstronomy_psf(_write(tmp_path / "p.h5", kernel_point_source=k)), k)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared SL2S files are absent")
def test_shared_sl2s_files():
    im = read_lenstronomy_image(SHARED / "image_lens_system3_F600LP.h5")
    assert im.data.shape == (130, 130) and math.isclose(im.pixel_scale, 0.04, rel_tol=1e-3)
    assert np.all(np.isfinite(im.sigma)) and im.sigma.min() >= 0.0074
    k = read_lenstronomy_psf(SHARED / "psf_lens_system3_F600LP.h5")
    assert k.shape == (61, 61) and k.max() == k[30, 30]
