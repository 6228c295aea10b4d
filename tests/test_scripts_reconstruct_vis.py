"""reconstruct.py --visibilities: interferometric data (npz, uvfits) with a given lens (tiny grids)."""

import json

import numpy as np
import pytest
from astropy.io import fits

import lensinv

from .conftest import refused, script_module, tiny_rim_checkpoint

pytest.importorskip("finufft")
from lensinv import uv as luv  # noqa: E402

LENS = "theta_E=0.35,q=0.8,phi=0.4,gamma=0.02,gamma_phi=1.0"
N_IMG, SCALE, N_SRC, FOV = 32, 0.04, 16, 0.6
GRID = ["--image-n", str(N_IMG), "--pixel-scale", str(SCALE), "--source-n", str(N_SRC), "--source-fov", str(FOV)]


@pytest.fixture(scope="module")
def rec():
    return script_module("reconstruct")


@pytest.fixture(scope="module")
def vis(tmp_path_factory):
    """3,000 visibilities (within the 0.04" grid's Nyquist limit) of a lensed Gaussian, as npz and uvfits."""
    d = tmp_path_factory.mktemp("vis")
    rng = np.random.default_rng(3)
    uv = rng.normal(0, 5e5, (3000, 2))
    uv = uv[np.hypot(*uv.T) < 2e6]
    lens = lensinv.Lens(lensinv.SIE(0.35, 0.8, 0.4), lensinv.ExternalShear(0.02, 1.0))
    sg = lensinv.SourceGrid(N_SRC, FOV)
    x, y = sg.coordinates()
    src = 1e-3 * np.exp(-((x - 0.03) ** 2 + y ** 2) / (2 * 0.08 ** 2))  # Jy/pixel
    op = lensinv.visibility_operator(lens, uv, lensinv.ImageGrid(N_IMG, SCALE), sg, supersample=2)
    data = luv.simulate_visibilities(op, src, 2e-4, rng, frequency=230e9)
    luv.write_npz(d / "obs.npz", data)
    luv.write_uvfits(d / "obs.uvfits", data)
    return src, data, d


def test_warren_dye_on_visibilities_writes_the_imaging_outputs(rec, vis, tmp_path, capsys):
    src, data, d = vis
    out = tmp_path / "r"
    assert rec.main(["--visibilities", str(d / "obs.npz"), "--lens", LENS, "--method", "warren-dye", "--out",
                     str(out), *GRID]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["method"] == "warren-dye" and fit["data"] == "visibilities"
    assert fit["n_visibilities"] == data.n_vis and fit["n_pixels"] == 2 * data.n_vis
    assert 0.9 < fit["chi2_per_pixel"] < 1.1  # fits the data to the noise
    assert fit["lens"]["theta_E"] == 0.35 and fit["lens_std"] is None and np.isfinite(fit["log_evidence"])
    source = fits.getdata(out / "source.fits")
    assert source.shape == (N_SRC, N_SRC)
    assert np.corrcoef(source.ravel(), src.ravel())[0, 1] > 0.9
    assert abs(source.sum() / src.sum() - 1) < 0.1  # flux in Jy (source in Jy/pixel)
    for name in ("fit.png", "reconstruction.png"):
        assert (out / name).stat().st_size > 10_000
    # uvfits gives the same reconstruction (the same data, stored in single precision there)
    out2 = tmp_path / "r2"
    assert rec.main(["--visibilities", str(d / "obs.uvfits"), "--lens", LENS, "--method", "warren-dye", "--out",
                     str(out2), *GRID]) == 0
    np.testing.assert_allclose(fits.getdata(out2 / "source.fits"), source, atol=0.02 * np.abs(source).max())
    # and an earlier result is kept
    before = (out / "fit.json").read_text()
    refused(rec.main, ["--visibilities", str(d / "obs.npz"), "--lens", LENS, "--method", "warren-dye", "--out",
                       str(out), *GRID], capsys, "--overwrite")
    assert (out / "fit.json").read_text() == before


@pytest.mark.parametrize("extra, words", [
    ([], ("--lens",)),
    (["--lens", LENS, "--sigma", "0.1"], ("--sigma", "not used with --visibilities")),
    (["--lens", LENS, "--psf-fwhm", "0.1"], ("--psf-fwhm",)),
    (["--lens", LENS, "--lens-light"], ("--lens-light",)),
])
def test_visibility_flags_are_checked_before_the_work(rec, vis, tmp_path, capsys, extra, words):
    refused(rec.main, ["--visibilities", str(vis[2] / "obs.npz"), "--method", "warren-dye", "--out",
                       str(tmp_path / "o"), *extra], capsys, *words)
    assert not (tmp_path / "o").exists()


def test_image_grid_flags_need_visibilities(rec, tmp_path, capsys):
    refused(rec.main, ["--image", "x.fits", "--sigma", "1", "--image-n", "64", "--out", str(tmp_path / "o")], capsys,
            "--image-n", "only with --visibilities")


def test_an_undersampling_pixel_scale_is_refused(rec, vis, tmp_path, capsys):
    code = rec.main(["--visibilities", str(vis[2] / "obs.npz"), "--lens", LENS, "--method", "warren-dye",
                     "--out", str(tmp_path / "o"), "--image-n", "16", "--pixel-scale", "0.2",
                     "--source-n", str(N_SRC), "--source-fov", str(FOV)])
    assert code == 2 and "alias" in capsys.readouterr().err
    assert not (tmp_path / "o" / "source.fits").exists()


def test_a_primary_beam_needs_the_frequency(rec, vis, tmp_path, capsys):
    src, data, d = vis
    luv.write_npz(tmp_path / "nofreq.npz", luv.Visibilities(data.uv, data.vis, data.sigma))
    code = rec.main(["--visibilities", str(tmp_path / "nofreq.npz"), "--lens", LENS, "--method", "warren-dye",
                     "--out", str(tmp_path / "o"), "--dish-diameter", "12", *GRID])
    assert code == 2 and "frequency" in capsys.readouterr().err
    assert rec.main(["--visibilities", str(d / "obs.npz"), "--lens", LENS, "--method", "warren-dye",
                     "--out", str(tmp_path / "pb"), "--dish-diameter", "12", *GRID]) == 0
    assert json.loads((tmp_path / "pb" / "fit.json").read_text())["chi2_per_pixel"] < 1.2


@pytest.fixture(scope="module")
def tiny_rim(tmp_path_factory):
    return tiny_rim_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", N_IMG, N_SRC)


def test_rim_and_rim_plus_warren_dye_on_visibilities(rec, vis, tiny_rim, tmp_path):
    """The RIM runs on the visibilities' dirty image and beam; rim+wd takes its estimate as the prior
    mean of the uv-plane inversion and then fits the data to the noise, which the untrained RIM alone
    does not."""
    src, data, d = vis
    chi2 = {}
    for method in ("rim", "rim+wd"):
        out = tmp_path / method
        assert rec.main(["--visibilities", str(d / "obs.npz"), "--lens", LENS, "--method", method, "--checkpoint",
                         str(tiny_rim), "--out", str(out), *GRID]) == 0
        fit = json.loads((out / "fit.json").read_text())
        assert fit["method"] == method and fit["data"] == "visibilities" and fit["n_pixels"] == 2 * data.n_vis
        chi2[method] = fit["chi2_per_pixel"]
        with fits.open(out / "source.fits") as hdul:
            assert hdul[0].header["METHOD"] == method and hdul[0].data.shape == (N_SRC, N_SRC)
            assert np.all(np.isfinite(hdul[0].data))
        assert (fit["log_evidence"] is None) == (method == "rim")
    assert 0.9 < chi2["rim+wd"] < 1.1 and chi2["rim"] > 1.5


def test_rim_on_visibilities_checks_its_grid_and_weights(rec, vis, tiny_rim, tmp_path, capsys, monkeypatch):
    d = vis[2]
    base = ["--visibilities", str(d / "obs.npz"), "--lens", LENS, "--method", "rim", "--out", str(tmp_path / "o")]
    refused(rec.main, [*base, "--checkpoint", str(tiny_rim), "--image-n", "48", "--pixel-scale", "0.04",
                       "--source-n", str(N_SRC)], capsys, "--image-n 48", "32 x 0.04")
    refused(rec.main, [*base, "--checkpoint", str(tiny_rim), *GRID[:4], "--source-n", "8"], capsys, "--source-n 8")
    import rim

    monkeypatch.setattr(rim, "ALMA_WEIGHTS", tmp_path / "none.pt")
    refused(rec.main, [*base, *GRID], capsys, "--checkpoint", "--method warren-dye")
    assert not (tmp_path / "o" / "source.fits").exists()
