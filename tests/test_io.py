"""lensinv.io: atomic writes and the FITS image reader (``file.fits[EXT]``)."""

import numpy as np
import pytest
from astropy.io import fits

from lensinv.io import atomic_path, atomic_write, read_fits_image, split_fits_spec, write_text_atomic


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "b.npy"
    with atomic_path(target) as tmp:
        assert tmp != target
        np.save(open(tmp, "wb"), np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy"]


@pytest.fixture
def mef(tmp_path):
    path = tmp_path / "obs.fits"
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 4)), name="VIS_FLUX"),
                         fits.ImageHDU(2 * np.ones((5, 5)), name="VIS_RMS")])
    hdus[2].header["PIXSCALE"] = 0.1
    hdus.writeto(path)
    return path


def test_extension_by_name_index_and_default(mef):
    assert read_fits_image(f"{mef}[VIS_RMS]").data.shape == (5, 5)
    assert read_fits_image(f"{mef}[vis_rms]").header["PIXSCALE"] == 0.1  # names are case-insensitive
    assert read_fits_image(f"{mef}[2]").data[0, 0] == 2.0
    assert read_fits_image(mef).data.shape == (4, 4)  # first 2-D image
    assert read_fits_image(mef, hdu="VIS_RMS").data.shape == (5, 5)
    assert split_fits_spec(f"{mef}[3]") == (mef, 3)


@pytest.mark.parametrize("spec, match", [
    ("{f}[NOPE]", "has no extension 'NOPE'"),
    ("{f}[7]", "has no extension 7"),
    ("{f}[0]", "not a 2-D image"),
    ("{d}", "is a directory"),
    ("{d}/missing.fits", "does not exist"),
])
def test_errors_name_the_file(mef, tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        read_fits_image(spec.format(f=mef, d=tmp_path), name="--image")


def test_not_fits(tmp_path):
    bad = tmp_path / "x.fits"
    bad.write_bytes(b"not a fits file at all" * 100)
    with pytest.raises(ValueError, match="x.fits"):
        read_fits_image(bad, name="PSF")
