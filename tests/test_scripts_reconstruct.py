"""reconstruct.py on hostile input: earlier results, bad flags, odd images (in-process, tiny grids)."""

import numpy as np
import pytest
from astropy.io import fits

import lensinv

from .conftest import refused, script_module, tiny_rim_checkpoint

LENS = "theta_E=0.35,q=0.8,phi=0.4,gamma=0.02,gamma_phi=1.0"
N_IMG, N_SRC, FOV = 32, 16, 0.6  # 32 x 0.04 arcsec images, as the tiny RIM below expects


@pytest.fixture(scope="module")
def rec():
    return script_module("reconstruct")


@pytest.fixture(scope="module")
def tiny_rim(tmp_path_factory):
    return tiny_rim_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", N_IMG, N_SRC)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    """A 32 x 32 image at 0.04 arcsec (PIXSCALE header) of a Gaussian source, its sigma, and the file."""
    d = tmp_path_factory.mktemp("obs")
    lens = lensinv.Lens(lensinv.SIE(0.35, 0.8, 0.4), lensinv.ExternalShear(0.02, 1.0))
    sg = lensinv.SourceGrid(N_SRC, FOV)
    x, y = np.meshgrid((np.arange(N_SRC) - (N_SRC - 1) / 2) * sg.delta, (np.arange(N_SRC) - (N_SRC - 1) / 2) * sg.delta)
    src = np.exp(-((x - 0.03) ** 2 + y ** 2) / (2 * 0.08 ** 2))
    img = lensinv.operator(lens, lensinv.ImageGrid(N_IMG, 0.04), sg, supersample=2).apply(src)
    sigma = 0.02
    img = img + np.random.default_rng(1).normal(0, sigma, img.shape)
    h = fits.Header()
    h["PIXSCALE"] = 0.04
    fits.PrimaryHDU(img, header=h).writeto(d / "obs.fits")
    return img, sigma, d / "obs.fits"


def _args(image, out, *extra, sigma=0.02, method="warren-dye", lens=LENS):
    return ["--image", str(image), "--lens", lens, "--sigma", str(sigma), "--method", method,
            "--source-n", str(N_SRC), "--source-fov", str(FOV), "--out", str(out), *map(str, extra)]


def _refused(rec, argv, capsys, *words) -> str:
    return refused(rec.main, argv, capsys, *words)


def test_an_earlier_result_is_kept_without_overwrite(rec, obs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert rec.main(_args(obs[2], out)) == 0
    before = (out / "source.fits").read_bytes()
    monkeypatch.setattr(rec, "run", lambda args: pytest.fail("work started"))
    _refused(rec, _args(obs[2], out, "--regularization", "zeroth"), capsys, "--overwrite", "source.fits")
    assert (out / "source.fits").read_bytes() == before
    monkeypatch.undo()
    assert rec.main(_args(obs[2], out, "--regularization", "zeroth", "--overwrite")) == 0
    assert fits.getheader(out / "source.fits")["REGUL"] == "zeroth"
    assert not list(out.glob("*.tmp*"))


def test_fit_json_alone_also_counts_as_a_result(rec, obs, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "fit.json").write_text("{}")
    _refused(rec, _args(obs[2], out), capsys, "fit.json")
    assert (out / "fit.json").read_text() == "{}"


def test_an_empty_existing_folder_is_fine(rec, obs, tmp_path):
    (tmp_path / "r").mkdir()
    assert rec.main(_args(obs[2], tmp_path / "r")) == 0


def test_out_an_existing_file_is_refused_before_the_work(rec, obs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "file"
    out.write_text("keep me")
    monkeypatch.setattr(rec, "run", lambda args: pytest.fail("work started"))
    _refused(rec, _args(obs[2], out), capsys, "--out", "not a folder")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("flag, value", [("--psf-fwhm", "0"), ("--psf-fwhm", "-0.1"), ("--psf-fwhm", "nan"),
                                         ("--pixel-scale", "0"), ("--pixel-scale", "-0.04"),
                                         ("--pixel-scale", "inf"), ("--source-fov", "0"), ("--sigma", "0")])
def test_bad_numbers_name_their_flag(rec, obs, tmp_path, capsys, flag, value):
    argv = _args(obs[2], tmp_path / "r")
    if flag == "--sigma":
        argv[argv.index("--sigma") + 1] = value
    else:
        argv += [flag, value]
    _refused(rec, argv, capsys, flag)
    assert not (tmp_path / "r").exists()


def test_pixel_scale_0_is_refused_also_without_a_header(rec, obs, tmp_path, capsys):
    fits.PrimaryHDU(obs[0]).writeto(tmp_path / "nohdr.fits")
    for v in ("0", "-0.04"):  # the value is wrong; not "no pixel scale"
        err = _refused(rec, _args(tmp_path / "nohdr.fits", tmp_path / "r", "--pixel-scale", v), capsys,
                       "--pixel-scale", "> 0", v)
        assert "no pixel scale" not in err


def test_a_bad_pixscale_header_is_reported(rec, obs, tmp_path, capsys):
    h = fits.Header()
    h["PIXSCALE"] = -0.04
    fits.PrimaryHDU(obs[0], header=h).writeto(tmp_path / "neg.fits")
    _refused(rec, _args(tmp_path / "neg.fits", tmp_path / "r"), capsys, "PIXSCALE", "-0.04")
    assert rec.main(_args(tmp_path / "neg.fits", tmp_path / "r", "--pixel-scale", "0.04")) == 0


def test_a_repeated_lens_key_is_refused(rec, obs, tmp_path, capsys):
    _refused(rec, _args(obs[2], tmp_path / "r", lens=LENS + ",theta_E=0.5"), capsys, "theta_E", "more than once")


def test_an_image_that_is_a_directory(rec, tmp_path, capsys):
    (tmp_path / "d.fits").mkdir()
    _refused(rec, _args(tmp_path / "d.fits", tmp_path / "r"), capsys, "is a directory")


def test_rim_refuses_a_source_n_its_model_does_not_have(rec, obs, tiny_rim, tmp_path, capsys):
    argv = _args(obs[2], tmp_path / "r", "--checkpoint", tiny_rim, method="rim")
    argv[argv.index("--source-n") + 1] = "32"
    _refused(rec, argv, capsys, "--source-n 32", str(N_SRC))
    argv = _args(obs[2], tmp_path / "r", "--checkpoint", tiny_rim, method="rim")
    del argv[argv.index("--source-n"):argv.index("--source-n") + 2]  # default: the model's grid
    assert rec.main(argv) == 0
    assert fits.getdata(tmp_path / "r" / "source.fits").shape == (N_SRC, N_SRC)


def test_rim_refuses_a_tiny_image(rec, obs, tiny_rim, tmp_path, capsys):
    h = fits.Header()
    h["PIXSCALE"] = 0.04
    fits.PrimaryHDU(obs[0][14:18, 14:18], header=h).writeto(tmp_path / "tiny.fits")
    _refused(rec, _args(tmp_path / "tiny.fits", tmp_path / "r", "--checkpoint", tiny_rim, method="rim"), capsys,
             "too small", "--method warren-dye")
    assert not (tmp_path / "r").exists()


def test_rim_on_an_image_in_counts_scales_the_source(rec, obs, tiny_rim, tmp_path):
    img, sigma, path = obs
    c = 5000.0
    h = fits.Header()
    h["PIXSCALE"] = 0.04
    fits.PrimaryHDU(img * c, header=h).writeto(tmp_path / "counts.fits")
    assert rec.main(_args(path, tmp_path / "a", "--checkpoint", tiny_rim, sigma=sigma, method="rim")) == 0
    assert rec.main(_args(tmp_path / "counts.fits", tmp_path / "b", "--checkpoint", tiny_rim, sigma=sigma * c,
                          method="rim")) == 0
    a = fits.getdata(tmp_path / "a" / "source.fits").astype(float)
    b = fits.getdata(tmp_path / "b" / "source.fits").astype(float)
    np.testing.assert_allclose(b, c * a, rtol=1e-3, atol=1e-3 * c * np.abs(a).max())


def test_rim_plus_warren_dye_fits_the_data(rec, obs, tiny_rim, tmp_path):
    """rim+wd: the (here untrained) RIM's estimate as the prior mean of an evidence-optimised inversion:
    the result fits the data to the noise, which the tiny RIM alone does not."""
    img, sigma, path = obs
    assert rec.main(_args(path, tmp_path / "rw", "--checkpoint", tiny_rim, sigma=sigma, method="rim+wd")) == 0
    with fits.open(tmp_path / "rw" / "source.fits") as hdul:
        h = hdul[0].header
        assert h["METHOD"] == "rim+wd" and h["REGUL"] in ("gradient", "curvature")
        assert 0.5 < h["CHI2N"] < 1.5
        # the script's literal default (rim is imported only where a RIM runs) is the library's
        import rim

        assert h["RIMTRF"] == rim.DEFAULT_TRANSFORMS
