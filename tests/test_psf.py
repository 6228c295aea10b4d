import numpy as np
import pytest

import lensinv
from lensinv import airy_psf, gaussian_psf, psf_from_fits, validate_kernel


def test_gaussian_matches_astropy_integrated_kernel():
    from astropy.convolution import Gaussian2DKernel

    k = gaussian_psf(fwhm=0.08, pixel_scale=0.04, size=11)
    sigma = 0.08 / 0.04 / (2 * np.sqrt(2 * np.log(2)))
    ref = Gaussian2DKernel(sigma, x_size=11, y_size=11, mode="integrate").array
    np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-9)
    assert k.sum() == pytest.approx(1.0, abs=1e-14)


def test_gaussian_width_and_default_size():
    k = gaussian_psf(fwhm=0.12, pixel_scale=0.03)
    assert k.shape[0] % 2 == 1 and k.shape[0] >= 2 * 4 * (0.12 / 0.03 / 2.3548) + 1
    n = k.shape[0]
    c = np.arange(n) - n // 2
    var = np.sum(k.sum(axis=0) * c**2)  # pixel-integrated: sigma^2 + 1/12 pixel^2
    assert np.sqrt(var - 1 / 12) * 2.3548 * 0.03 == pytest.approx(0.12, rel=1e-3)


def test_airy_kernel():
    k = airy_psf(fwhm=0.1, pixel_scale=0.01)
    n = k.shape[0]
    assert n % 2 == 1 and k.sum() == pytest.approx(1.0)
    c = n // 2
    assert k[c, c] == k.max()
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    prof = k[c, c:] / k[c, c]
    # half maximum near fwhm/2 = 5 pixels; first dark ring near 1.185 fwhm = 11.85 pixels
    half = np.interp(0.5, prof[:8][::-1], np.arange(8)[::-1])
    assert half == pytest.approx(5.0, abs=0.3)
    assert prof[11:13].min() < 2e-3


def test_fits_round_trip(tmp_path):
    from astropy.io import fits

    k = gaussian_psf(0.1, 0.04) * 7.0
    path = tmp_path / "psf.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(k)]).writeto(path)
    np.testing.assert_allclose(psf_from_fits(path), k / k.sum())
    noisy = k.copy()
    noisy[0, 0] = -1e-4
    fits.PrimaryHDU(noisy).writeto(tmp_path / "neg.fits")
    with pytest.raises(ValueError, match="negative"):
        psf_from_fits(tmp_path / "neg.fits")
    clipped = psf_from_fits(tmp_path / "neg.fits", clip_negative=True)
    assert clipped.min() >= 0 and clipped.sum() == pytest.approx(1.0)
    (tmp_path / "junk.fits").write_text("not a fits file")
    with pytest.raises(ValueError, match="FITS"):
        psf_from_fits(tmp_path / "junk.fits")
    with pytest.raises(ValueError, match="does not exist"):
        psf_from_fits(tmp_path / "missing.fits")
    fits.PrimaryHDU(np.zeros((2, 3, 3))).writeto(tmp_path / "cube.fits")
    with pytest.raises(ValueError, match="2-D"):
        psf_from_fits(tmp_path / "cube.fits")


@pytest.mark.parametrize("kernel, msg", [
    (np.ones((4, 4)), "odd"), (np.ones((3, 5)), "square"), (np.ones(3), "2-D"),
    (np.array([[0, 1, 0], [1, np.nan, 1], [0, 1, 0]]), "NaN"), (np.array([[0, 1, 0], [1, -2, 1], [0, 1, 0.0]]), "negative"),
    (np.zeros((3, 3)), "sums to"), (np.full((3, 3), np.inf), "inf"),
])
def test_invalid_kernels(kernel, msg):
    with pytest.raises(ValueError, match=msg):
        validate_kernel(kernel)
    with pytest.raises(ValueError, match=msg):
        lensinv.operator(lensinv.Lens(lensinv.SIE(1.0)), lensinv.ImageGrid(8, 0.1), lensinv.SourceGrid(4, 1.0),
                         psf=kernel)


@pytest.mark.parametrize("fn, kwargs, name", [
    (gaussian_psf, {"fwhm": 0.0, "pixel_scale": 0.04}, "fwhm"), (gaussian_psf, {"fwhm": 0.1, "pixel_scale": -1}, "pixel_scale"),
    (gaussian_psf, {"fwhm": 0.1, "pixel_scale": 0.04, "size": 4}, "size"),
    (airy_psf, {"fwhm": np.nan, "pixel_scale": 0.04}, "fwhm"),
])
def test_invalid_psf_parameters(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


@pytest.mark.parametrize("fn", [gaussian_psf, airy_psf])
def test_default_kernel_size_is_capped(fn):
    # fwhm=100 arcsec at 0.04 arcsec pixels used to build an 8495 x 8495 (577 MB) kernel silently
    from lensinv.psf import MAX_KERNEL_SIZE

    with pytest.raises(ValueError, match=r"fwhm=100.*pixel_scale=0\.04.*1025"):
        fn(100.0, 0.04)
    with pytest.raises(ValueError, match="fwhm"):  # fwhm / pixel_scale overflows to inf
        fn(1e300, 1e-300)
    with pytest.raises(ValueError, match="size"):
        fn(0.1, 0.04, size=MAX_KERNEL_SIZE + 2)
    k = fn(100.0, 0.04, size=33)  # an explicit size truncates instead
    assert k.shape == (33, 33) and k.sum() == pytest.approx(1.0)
    big = fn(0.999 * 512 * 0.04 * (2.3548 / 4 if fn is gaussian_psf else 1 / (4 * 1.1853)), 0.04)
    assert big.shape[0] <= MAX_KERNEL_SIZE


def test_tiny_fwhm_gives_a_delta_or_names_fwhm():
    k = gaussian_psf(1e-300, 1e300)  # sigma underflows to 0: a delta, without warnings
    assert k[1, 1] == 1.0 and k.sum() == 1.0
    with pytest.raises(ValueError, match="fwhm"):
        airy_psf(1e-300, 1.0)


@pytest.mark.parametrize("kernel, msg", [
    ("abc", "real numbers"), (np.ones((3, 3)) * 1j, "complex"), (np.array([["a", "b", "c"]] * 3), "real numbers"),
])
def test_kernel_dtype_is_named(kernel, msg):
    with pytest.raises(ValueError, match=msg):
        validate_kernel(kernel, name="psf")


def test_kernel_extreme_magnitudes_normalise():
    for scale in (1e308, 1e-320):
        k = validate_kernel(np.full((3, 3), scale))
        np.testing.assert_allclose(k, 1 / 9, rtol=1e-12)


def test_fits_bad_extension_and_directory(tmp_path):
    from astropy.io import fits

    path = tmp_path / "psf.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 3)), name="PSF")]).writeto(path)
    with pytest.raises(ValueError, match=r"no extension 5 \(it has 2: PRIMARY, PSF\)"):
        psf_from_fits(path, hdu=5)
    with pytest.raises(ValueError, match="no extension 'NOPE'"):
        psf_from_fits(path, hdu="NOPE")
    with pytest.raises(ValueError, match="no extension 3"):
        psf_from_fits(f"{path}[3]")
    with pytest.raises(ValueError, match="is a directory"):
        psf_from_fits(tmp_path)
    for bad in (True, 1.0):
        with pytest.raises(ValueError, match="hdu"):
            psf_from_fits(path, hdu=bad)
    np.testing.assert_allclose(psf_from_fits(path, hdu=np.int64(1)), 1 / 9)
    np.testing.assert_allclose(psf_from_fits(path, hdu="PSF"), 1 / 9)


def test_airy_oversample_is_capped():
    # oversample=10**20 used to raise astropy's unnamed "Maximum allowed size exceeded"
    with pytest.raises(ValueError, match="oversample"):
        airy_psf(0.3, 0.2, oversample=10**20)
    assert airy_psf(0.3, 0.2, oversample=100).shape == (17, 17)
