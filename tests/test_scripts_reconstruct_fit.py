"""reconstruct.py fitting the lens (no --lens), masks and bad pixels, fit.json (DESIGN.md "Command line").

In-process on a 48 x 48 image of 0.05 arcsec with a quick fit configuration (``reconstruct.FIT_CONFIG``):
each fit takes some seconds on one core.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy.signal import fftconvolve

import lensinv
from baselines import FitConfig

from .conftest import refused, script_module

N, SCALE = 48, 0.05
IG = lensinv.ImageGrid(N, SCALE)
PSF = lensinv.gaussian_psf(0.1, SCALE)
TRUE = dict(theta_E=0.75, q=0.8, phi=0.4, center_x=0.03, center_y=-0.02, gamma=0.03, gamma_phi=1.1)
LENS = ",".join(f"{k}={v}" for k, v in TRUE.items())
QUICK = FitConfig(source_n=16, coarse_source_n=12, refine_evaluations=150, coarse_evaluations=250, lam_mode="fixed")
KEYS = {"lens", "lens_std", "chi2_per_pixel", "n_pixels", "log_evidence", "method"}
LENS_KEYS = {"theta_E", "q", "phi", "center_x", "center_y", "gamma", "gamma_phi"}


@pytest.fixture(scope="module")
def rec():
    mod = script_module("reconstruct")
    old = mod.FIT_CONFIG
    mod.FIT_CONFIG = QUICK
    yield mod
    mod.FIT_CONFIG = old


def _truth() -> lensinv.Lens:
    t = TRUE
    return lensinv.Lens(lensinv.SIE(t["theta_E"], t["q"], t["phi"], (t["center_x"], t["center_y"])),
                        lensinv.ExternalShear(t["gamma"], t["gamma_phi"]))


def _simulate(seed: int = 1, light: bool = False) -> tuple[np.ndarray, float]:
    """A two-Gaussian source behind the true lens, peak S/N 30; optionally a Sersic-like lens galaxy."""
    sg = lensinv.SourceGrid(64, 1.4)
    x, y = sg.coordinates()
    src = (np.exp(-0.5 * ((x - 0.06) ** 2 + (y - 0.02) ** 2 / 0.6) / 0.07**2)
           + 0.5 * np.exp(-0.5 * ((x + 0.05) ** 2 + (y + 0.08) ** 2) / 0.04**2))
    clean = lensinv.operator(_truth(), IG, sg, psf=PSF).apply(src)
    sigma = float(clean.max()) / 30.0
    if light:
        gx, gy = IG.coordinates()
        r = np.hypot(gx - TRUE["center_x"], gy - TRUE["center_y"])
        clean = clean + fftconvolve(0.5 * clean.max() * np.exp(-3.67 * (np.sqrt(r / 0.4) - 1)), PSF, mode="same")
    return clean + np.random.default_rng(seed).normal(0.0, sigma, clean.shape), sigma


def _files(d: Path, image: np.ndarray, noise: np.ndarray) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    h = fits.Header()
    h["PIXSCALE"] = SCALE
    fits.PrimaryHDU(image, header=h).writeto(d / "image.fits", overwrite=True)
    fits.PrimaryHDU(noise).writeto(d / "noise.fits", overwrite=True)
    fits.PrimaryHDU(PSF).writeto(d / "psf.fits", overwrite=True)
    return ["--image", str(d / "image.fits"), "--noise", str(d / "noise.fits"), "--psf", str(d / "psf.fits")]


def _refused(rec, argv, capsys, *words) -> str:
    return refused(rec.main, argv, capsys, *words)


def _load(out: Path) -> dict:
    result = json.loads((out / "fit.json").read_text())
    assert set(result) == KEYS, result
    return result


@pytest.fixture(scope="module")
def sim():
    return _simulate(1)


def test_fit_without_lens_writes_fit_json(rec, sim, tmp_path, capsys):
    image, sigma = sim
    out = tmp_path / "r"
    handlers = list(logging.getLogger().handlers)
    t = time.perf_counter()
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma)) + ["--method", "warren-dye",
                                                                          "--out", str(out), "-v",
                                                                          "--posterior-steps", "6"]) == 0
    assert logging.getLogger().handlers == handlers  # -v's handler is gone after the run
    wall = time.perf_counter() - t
    err = capsys.readouterr().err
    assert "fit" in err  # the progress bar and the summary
    assert "baselines.lens_fit: geometry: centre" in err and "coarse stage" in err  # --verbose
    r = _load(out)
    assert set(r["lens"]) == LENS_KEYS and set(r["lens_std"]) == LENS_KEYS
    assert abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.02, r["lens"]
    assert abs(r["lens"]["q"] - TRUE["q"]) < 0.05, r["lens"]
    assert math.hypot(r["lens"]["center_x"] - TRUE["center_x"], r["lens"]["center_y"] - TRUE["center_y"]) < 0.03
    assert all(v is None or (math.isfinite(v) and v >= 0) for v in r["lens_std"].values())
    assert r["lens_std"]["theta_E"] is not None and r["lens_std"]["theta_E"] < 0.02
    assert r["n_pixels"] == N * N and r["method"] == "warren-dye"
    assert 0.7 < r["chi2_per_pixel"] < 1.3 and math.isfinite(r["log_evidence"])
    h = fits.getheader(out / "source.fits")
    assert h["FITTED"] and math.isclose(h["THETA_E"], r["lens"]["theta_E"])
    # the grid is placed on the source (SRC_X0, SRC_Y0): the reconstructed flux centroid in those
    # coordinates is the true source's, (0.041, 0.003) arcsec
    src = np.clip(fits.getdata(out / "source.fits").astype(float), 0.0, None)
    sx, sy = lensinv.SourceGrid(h["SRC_N"], h["SRC_FOV"]).coordinates()
    cx, cy = h["SRC_X0"] + np.sum(src * sx) / src.sum(), h["SRC_Y0"] + np.sum(src * sy) / src.sum()
    assert math.hypot(cx - 0.041, cy - 0.003) < 0.01, (cx, cy, h["SRC_X0"], h["SRC_Y0"])  # 0.04 off without
    assert 0.3 < h["SRC_FOV"] < 0.6  # the source's box (about 4 sigma of its main Gaussian) times the margin
    assert (out / "fit.png").stat().st_size > 0 and not list(out.glob("*.tmp*"))
    # --posterior-steps: 16 walkers x 6 steps, the last 3 kept; lens_std is their spread (plus the grid term)
    post = np.genfromtxt(out / "posterior.csv", delimiter=",", names=True)
    assert set(post.dtype.names) == LENS_KEYS | {"log_posterior"} and len(post) == 16 * 3
    for k in ("theta_E", "center_x", "center_y"):  # centres from the image's centre, as in fit.json
        assert abs(np.median(post[k]) - r["lens"][k]) < 3 * r["lens_std"][k]
        assert 0 < np.std(post[k], ddof=1) <= r["lens_std"][k] * (1 + 1e-6)
    assert np.all(post["log_posterior"] <= np.max(post["log_posterior"]))
    assert (out / "posterior.png").stat().st_size > 5000 and "posterior: 48 samples" in err
    with fits.open(out / "model.fits") as hdul:  # the model, the residuals and how coherent they are
        mask = hdul["MASK"].data.astype(bool)
        resid = hdul["RESIDUAL"].data
        assert mask.sum() == r["n_pixels"] and np.isnan(resid[~mask]).all()
        assert np.mean(resid[mask].astype(float) ** 2) == pytest.approx(r["chi2_per_pixel"], rel=1e-4)
        np.testing.assert_allclose(hdul["MODEL"].data, image - resid * sigma, atol=1e-4 * sigma)
        # the source pixels absorb part of the noise on the arcs: below 1, never the >> 1 of a missed arc
        assert 0.2 < hdul[0].header["COH_Z2"] < 2.0 and hdul[0].header["COH_NPIX"] > 50
        # white noise: the background's smoothed residuals have unit rms, so the calibrated value agrees
        assert 0.8 < hdul[0].header["COH_BKG"] < 1.2
        assert hdul[0].header["COH_Z2R"] == pytest.approx(hdul[0].header["COH_Z2"] / hdul[0].header["COH_BKG"] ** 2)
    print(f"fit without --lens: {wall:.1f} s")


def test_bad_pixels_and_mask_file_are_not_fitted(rec, sim, tmp_path, monkeypatch):
    """1e8 noise (with garbage data) and NaN noise are masked, as is a non-zero --mask; n_pixels counts the
    rest, and the fit still finds the lens."""
    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    image, sigma = sim
    image, noise = image.copy(), np.full(image.shape, sigma)
    bad = np.random.default_rng(3).choice(N * N, 30, replace=False)
    noise.flat[bad] = 1e8
    noise.flat[bad[:3]] = np.nan
    image.flat[bad] = 1e4 * sigma
    mask = np.zeros(image.shape, dtype=np.int16)
    mask[2:8, 3:9] = 1  # an "interloper" in a corner, with garbage in it
    image[2:8, 3:9] = 50 * sigma
    fits.PrimaryHDU(mask).writeto(tmp_path / "mask.fits")
    excluded = mask.astype(bool) | ~np.isfinite(noise) | (noise > 1e6)
    out = tmp_path / "r"
    argv = _files(tmp_path, image, noise) + ["--mask", str(tmp_path / "mask.fits"), "--method", "warren-dye",
                                             "--out", str(out)]
    assert rec.main(argv) == 0
    r = _load(out)
    assert r["n_pixels"] == N * N - int(excluded.sum())
    assert abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.02, r["lens"]
    assert 0.7 < r["chi2_per_pixel"] < 1.3


def test_bad_pixels_are_masked_with_a_given_lens(rec, sim, tmp_path):
    image, sigma = sim
    image, noise = image.copy(), np.full(image.shape, sigma)
    x, y = IG.coordinates()
    on_arc = np.flatnonzero(np.abs(np.hypot(x, y) - TRUE["theta_E"]) < 0.05)[::7]
    noise.flat[on_arc] = 1e8
    image.flat[on_arc] = 1e4 * sigma
    out = tmp_path / "r"
    assert rec.main(_files(tmp_path, image, noise) + ["--lens", LENS, "--method", "warren-dye", "--source-n", "24",
                                                      "--out", str(out)]) == 0
    r = _load(out)
    assert r["lens_std"] is None and r["lens"] == pytest.approx(TRUE)
    assert 0.5 < r["chi2_per_pixel"] < 1.5  # a garbage pixel fitted as data would add ~1e8 to chi2
    assert 0 < r["n_pixels"] <= N * N - on_arc.size
    assert np.all(np.isfinite(fits.getdata(out / "source.fits")))


def test_mask_file_with_a_given_lens_and_lens_light(rec, tmp_path):
    image, sigma = _simulate(2, light=True)
    mask = np.zeros(image.shape)
    mask[20:28, 40:46] = 1.0
    image[20:28, 40:46] += 100 * sigma
    fits.PrimaryHDU(mask).writeto(tmp_path / "mask.fits")
    out = tmp_path / "r"
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma))
                    + ["--lens", LENS, "--lens-light", "--mask", str(tmp_path / "mask.fits"),
                       "--method", "warren-dye", "--source-n", "24", "--out", str(out)]) == 0
    r = _load(out)
    assert 0.5 < r["chi2_per_pixel"] < 1.5
    assert (out / "fit.png").exists()


def test_mask_circle_masks_an_interloper_and_annulus_keeps_a_ring(rec, tmp_path):
    """--mask-circle X,Y,R masks the pixels within R arcsec of (X, Y) (as --lens's centre), --mask-annulus keeps
    R_IN <= r < R_OUT about the image's centre: with a given lens the fitted pixels are the arcs' (arc_mask of
    the data left) among those, and the garbage under the disc is not fitted."""
    image, sigma = _simulate(2)
    image[20:28, 40:46] += 100 * sigma  # x 0.825..1.075, y -0.175..0.175 arcsec
    image[2:6, 2:6] += 100 * sigma  # x -1.075..-0.925, y -1.075..-0.925: a second one, left of and below the centre
    x, y = IG.coordinates()
    disc = (np.hypot(x - 0.95, y) <= 0.25) | (np.hypot(x + 1.0, y + 1.0) <= 0.15)
    assert disc[20:28, 40:46].all()
    out = tmp_path / "c"
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma))
                    + ["--lens", LENS, "--mask-circle", "0.95,0,0.25", "--mask-circle", "-1,-1,0.15", "--method",
                       "warren-dye", "--source-n", "24", "--out", str(out)]) == 0
    import baselines

    def arcs(use):
        return baselines.arc_mask(np.where(use, image, 0.0), sigma) & use

    r = _load(out)
    assert arcs(~np.zeros_like(disc))[disc].any()  # unmasked, the interlopers would be fitted
    assert disc[2:6, 2:6].all()
    assert r["n_pixels"] == int(arcs(~disc).sum())
    assert 0.5 < r["chi2_per_pixel"] < 1.5  # the interloper fitted as data would give chi2/N ~ 200
    out = tmp_path / "a"
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma))
                    + ["--lens", LENS, "--mask-annulus", "0.4,1.1", "--mask-circle", "0.95,0,0.25",
                       "--mask-circle=-1,-1,0.15", "--method",
                       "warren-dye", "--source-n", "24", "--out", str(out)]) == 0
    rr = np.hypot(x, y)
    kept = (rr >= 0.4) & (rr < 1.1) & ~disc
    assert _load(out)["n_pixels"] == int(arcs(kept).sum()) < int(arcs(~disc).sum())


@pytest.mark.parametrize("flag, value, word", [
    ("--mask-circle", "1,2", "3 finite numbers"), ("--mask-circle", "0,0,-0.1", "radius"),
    ("--mask-circle", "0,x,1", "finite numbers"), ("--mask-annulus", "1,0.5", "R_IN < R_OUT"),
    ("--mask-annulus", "nan,1", "finite numbers")])
def test_bad_mask_regions_are_refused_naming_the_flag(rec, sim, tmp_path, capsys, monkeypatch, flag, value, word):
    image, sigma = sim
    monkeypatch.setattr(rec, "run", lambda args: pytest.fail("work started"))
    msg = _refused(rec, _files(tmp_path, image, np.full(image.shape, sigma))
                   + [flag, value, "--method", "warren-dye", "--out", str(tmp_path / "r")], capsys, flag)
    assert word in msg


def test_no_overwrite_without_the_flag(rec, sim, tmp_path, capsys, monkeypatch):
    image, sigma = sim
    out = tmp_path / "r"
    argv = _files(tmp_path, image, np.full(image.shape, sigma)) + ["--lens", LENS, "--method", "warren-dye",
                                                                   "--source-n", "16", "--out", str(out)]
    assert rec.main(argv) == 0
    before = {n: (out / n).read_bytes() for n in ("fit.json", "source.fits")}
    monkeypatch.setattr(rec, "run", lambda args: pytest.fail("work started"))
    _refused(rec, argv, capsys, "--overwrite")
    no_lens = argv[:argv.index("--lens")] + argv[argv.index("--lens") + 2:]
    _refused(rec, no_lens, capsys, "--overwrite")  # refused before any fitting too
    assert {n: (out / n).read_bytes() for n in before} == before
    monkeypatch.undo()
    argv[argv.index("--source-n") + 1] = "20"
    assert rec.main(argv + ["--overwrite"]) == 0
    assert fits.getdata(out / "source.fits").shape == (20, 20)


def test_bad_flags_exit_2_before_the_work(rec, sim, tmp_path, capsys, monkeypatch):
    image, sigma = sim
    base = _files(tmp_path, image, np.full(image.shape, sigma)) + ["--out", str(tmp_path / "r")]
    monkeypatch.setattr(rec, "run", lambda args: pytest.fail("work started"))
    _refused(rec, base + ["--method", "warren-dye", "--profile", "NFW"], capsys, "--profile")
    _refused(rec, base + ["--method", "warren-dye", "--profile", "EPL", "--lens", LENS], capsys, "--profile")
    _refused(rec, base + ["--method", "rim", "--lens-light"], capsys, "--lens-light")
    _refused(rec, base + ["--method", "warren-dye", "--lens", "theta_E=x"], capsys, "--lens", "theta_E")
    _refused(rec, base + ["--method", "warren-dye", "--lens", LENS, "--posterior-steps", "5"], capsys,
             "--posterior-steps")
    _refused(rec, base + ["--method", "warren-dye", "--posterior-steps", "1"], capsys, "--posterior-steps")
    _refused(rec, base + ["--method", "warren-dye", "--posterior-steps", "-2"], capsys, "--posterior-steps")
    monkeypatch.undo()
    fits.PrimaryHDU(np.zeros((10, 10))).writeto(tmp_path / "small.fits")
    _refused(rec, base + ["--method", "warren-dye", "--mask", str(tmp_path / "small.fits")], capsys, "--mask", "shape")
    fits.PrimaryHDU(np.ones(image.shape)).writeto(tmp_path / "all.fits")
    _refused(rec, base + ["--method", "warren-dye", "--mask", str(tmp_path / "all.fits")], capsys, "masked")
    assert not (tmp_path / "r").exists()


def test_fit_then_rim_plus_wd_with_the_fitted_lens(rec, sim, tmp_path, monkeypatch):
    """rim+wd without --lens: the lens fitted by Warren-Dye, then the (tiny, untrained) RIM and the
    inversion with it on the RIM's grid; an odd-sided image, whose cut-out is half a pixel off
    centre: the reported centre is still from the image's centre. No uncertainties: lens_std null."""
    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    import torch

    from rim import RIM, RIMConfig
    from rim.train import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3, source_n=16, image_n=48)
    model = RIM(cfg)
    opt = torch.optim.Adam(model.parameters())
    ck = tmp_path / "tiny.pt"
    save_checkpoint(ck, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1, TrainConfig(model=cfg))
    image, sigma = sim
    wide = np.pad(image, ((0, 0), (0, 1)))  # 48 x 49: the image's centre is half a pixel right of the cut-out's
    wide[:, -1] = np.random.default_rng(5).normal(0.0, sigma, N)
    out = tmp_path / "r"
    argv = _files(tmp_path, wide, np.full(wide.shape, sigma)) + ["--method", "rim+wd", "--checkpoint", str(ck),
                                                                 "--source-fov", "1.4", "--out", str(out)]
    assert rec.main(argv) == 0
    r = _load(out)
    assert r["method"] == "rim+wd" and r["lens_std"] is None
    assert abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.02, r["lens"]
    # the true centre is (0.03, -0.02) from the cut-out's centre, i.e. x - SCALE/2 from the image's
    assert abs(r["lens"]["center_x"] - (TRUE["center_x"] - SCALE / 2)) < 0.015, r["lens"]
    assert 0.5 < r["chi2_per_pixel"] < 1.5 and math.isfinite(r["log_evidence"])
    assert fits.getheader(out / "source.fits")["METHOD"] == "rim+wd"


def test_images_list_with_shards(rec, sim, tmp_path, capsys):
    image, sigma = sim
    names = ["a", "b", "c"]
    for name in names:
        _files(tmp_path / "lenses" / name, image, np.full(image.shape, sigma))
        (tmp_path / "lenses" / name / "noise.fits").rename(tmp_path / "lenses" / name / "noise_map.fits")
    lst = tmp_path / "lenses" / "list.txt"
    lst.write_text("# survey\n" + "\n".join(names) + "\n\n")
    out = tmp_path / "out"
    base = ["--images", str(lst), "--lens", LENS, "--method", "warren-dye", "--source-n", "16", "--out", str(out)]
    assert rec.main(base + ["--shard", "1/3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b"] and _load(out / "b")["n_pixels"] > 0
    before = (out / "b" / "fit.json").read_bytes()
    assert rec.main(base + ["--shard", "0/2"]) == 0  # a and c
    assert rec.main(base) == 0  # all done: b, a, c skipped
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == names and (out / "b" / "fit.json").read_bytes() == before
    for bad in ("3/3", "-1/2", "1", "a/b"):
        _refused(rec, base + ["--shard", bad], capsys, "--shard")
    _refused(rec, ["--image", str(tmp_path / "lenses" / "a" / "image.fits"), "--sigma", "1", "--shard", "0/2",
                   "--out", str(out)], capsys, "--shard", "--images")
    # a failing lens is reported and the batch goes on; the exit status says so
    (tmp_path / "lenses" / "c" / "image.fits").write_text("not FITS")
    assert rec.main(base + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "c: error" in err and "1 of 3 lenses failed: c" in err
    lst.write_text("a\nmissing\n")
    _refused(rec, base, capsys, "--images", "missing")
    _refused(rec, base + ["--sigma", "1"], capsys, "--images")


def test_epl_profile_reports_its_slope(rec, sim, tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    image, sigma = sim
    out = tmp_path / "r"
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma)) + ["--profile", "EPL", "--method",
                                                                          "warren-dye", "--out", str(out)]) == 0
    r = _load(out)
    assert set(r["lens"]) == LENS_KEYS | {"slope"}
    assert abs(r["lens"]["slope"] - 2.0) < 0.2 and abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.03, r["lens"]
    h = fits.getheader(out / "source.fits")
    assert h["PROFILE"] == "EPL" and math.isclose(h["SLOPE"], r["lens"]["slope"])


def test_no_shear_fits_the_mass_profile_alone(rec, sim, tmp_path, monkeypatch, capsys):
    """--no-shear: an SIE alone (the simulated shear of 0.03 is left unmodelled)."""
    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    image, sigma = sim
    out = tmp_path / "r"
    assert rec.main(_files(tmp_path, image, np.full(image.shape, sigma)) + ["--no-shear", "--method",
                                                                          "warren-dye", "--out", str(out)]) == 0
    r = _load(out)
    assert r["lens"]["gamma"] == 0 and r["lens"]["gamma_phi"] == 0
    assert abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.03, r["lens"]
    assert "lens fit (SIE):" in capsys.readouterr().err
    _refused(rec, _files(tmp_path, image, np.full(image.shape, sigma)) + ["--no-shear", "--lens", LENS, "--out",
                                                                         str(tmp_path / "s")], capsys, "--no-shear")


def test_crop_keeps_the_centre(rec):
    a = np.arange(11 * 12).reshape(11, 12)
    c = rec.crop_centred(a, 0.4, 0.05)  # 8 pixels: 9 of the odd axis, 8 of the even one
    assert c.shape == (9, 8) and c[4, 3] == a[5, 5] and c[4, 4] == a[5, 6]
    assert rec.crop_centred(a, 10.0, 0.05).shape == a.shape
    with pytest.raises(ValueError, match="--crop"):
        rec.crop_centred(a, 0.1, 0.05)


def test_crop_flag_fits_the_central_part(rec, sim, tmp_path, monkeypatch):
    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    image, sigma = sim
    big = np.pad(image, 16) + np.pad(np.zeros_like(image), 16, constant_values=1) * np.random.default_rng(9).normal(
        0.0, sigma, (N + 32, N + 32))
    out = tmp_path / "r"
    assert rec.main(_files(tmp_path, big, np.full(big.shape, sigma)) + ["--crop", str(N * SCALE), "--method",
                                                                      "warren-dye", "--out", str(out)]) == 0
    r = _load(out)
    assert r["n_pixels"] == N * N and abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.02
    assert math.hypot(r["lens"]["center_x"] - TRUE["center_x"], r["lens"]["center_y"] - TRUE["center_y"]) < 0.03


def test_psf_size_flag(rec, sim, tmp_path, capsys):
    image, sigma = sim
    base = _files(tmp_path, image, np.full(image.shape, sigma)) + ["--lens", LENS, "--method", "warren-dye",
                                                                   "--source-n", "16"]
    for bad in ("4", "1", "x"):
        _refused(rec, base + ["--psf-size", bad, "--out", str(tmp_path / "r")], capsys, "--psf-size")
    no_psf = base[:base.index("--psf")] + base[base.index("--psf") + 2:]
    _refused(rec, no_psf + ["--psf-size", "5", "--out", str(tmp_path / "r")], capsys, "--psf-size", "--psf")
    assert PSF.shape[0] > 3
    assert rec.main(base + ["--psf-size", "3", "--out", str(tmp_path / "r")]) == 0
    assert 0.5 < _load(tmp_path / "r")["chi2_per_pixel"] < 2.0


def test_lenstronomy_hdf5_input_brings_its_noise_and_pixel_scale(rec, sim, tmp_path, monkeypatch, capsys):
    """--image file.h5 (image_data, background_rms, exposure_time, transform_pix2angle) and --psf
    file.h5 (kernel_point_source): no --noise and no --pixel-scale needed; the lens is fitted."""
    import h5py

    monkeypatch.setattr(rec, "FIT_CONFIG", dataclasses.replace(QUICK, uncertainties=False))
    image, sigma = sim
    with h5py.File(tmp_path / "image.h5", "w") as f:
        f["image_data"] = image
        f["background_rms"] = sigma
        f["exposure_time"] = np.full(image.shape, 1e12)  # Poisson term negligible
        f["transform_pix2angle"] = np.array([[-SCALE, 0.0], [0.0, SCALE]])
    with h5py.File(tmp_path / "psf.h5", "w") as f:
        f["kernel_point_source"] = PSF
    out = tmp_path / "r"
    argv = ["--image", str(tmp_path / "image.h5"), "--psf", str(tmp_path / "psf.h5"), "--method", "warren-dye"]
    assert rec.main(argv + ["--out", str(out)]) == 0
    r = _load(out)
    assert abs(r["lens"]["theta_E"] / TRUE["theta_E"] - 1) < 0.02, r["lens"]
    assert r["n_pixels"] == N * N and 0.7 < r["chi2_per_pixel"] < 1.3
    assert math.isclose(fits.getheader(out / "source.fits")["IMSCALE"], SCALE)
    # a FITS image still needs its noise
    _files(tmp_path, image, np.full(image.shape, sigma))
    _refused(rec, ["--image", str(tmp_path / "image.fits"), "--method", "warren-dye", "--out", str(tmp_path / "s")],
             capsys, "--noise", "--sigma")


def test_measured_psf_noise_is_clipped_and_a_negative_psf_refused(rec, sim, tmp_path, capsys):
    """Small negative PSF pixels (Euclid's VIS_PSF has some) are noise: zeroed, with a note; a kernel
    with 5% of its |flux| negative is refused naming --psf."""
    image, sigma = sim
    argv = _files(tmp_path, image, np.full(image.shape, sigma)) + ["--lens", LENS, "--method", "warren-dye",
                                                                   "--source-n", "16"]
    noisy = PSF.copy()
    noisy[0, :3] = -1e-5
    fits.PrimaryHDU(noisy).writeto(tmp_path / "psf.fits", overwrite=True)
    assert rec.main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert "3 negative pixels" in capsys.readouterr().err
    bad = PSF.copy()
    bad[0, 0] = -0.05 * np.abs(PSF).sum()
    fits.PrimaryHDU(bad).writeto(tmp_path / "psf.fits", overwrite=True)
    _refused(rec, argv + ["--out", str(tmp_path / "b")], capsys, "--psf", "negative")
