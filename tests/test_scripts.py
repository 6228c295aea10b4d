"""End-to-end runs of compare_baselines.py, reconstruct.py and lens_error_sensitivity.py on tiny cases."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lensinv.dataset import build_dataset
from lensinv.simulate import PRESETS, SimulationConfig, simulate
from rim import RIM, RIMConfig
from rim.train import TrainConfig, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    torch.manual_seed(0)
    cfg = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3)
    model = RIM(cfg)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(path, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1, TrainConfig(model=cfg))
    return path


def _run(*args):
    # this checkout's packages, not an installed copy's (a script's own folder comes first on sys.path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def test_compare_baselines_on_a_tiny_data_set(tmp_path, tiny_checkpoint):
    data = build_dataset(tmp_path / "t.h5", 2, 5, SimulationConfig(preset=PRESETS["realistic"]))
    out = tmp_path / "cmp"
    r = _run(ROOT / "scripts" / "compare_baselines.py", "--data", data, "--checkpoint", tiny_checkpoint,
             "--out", out, "--examples", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("summary.md", "summary.json", "metrics.csv", "examples.png", "flux.png", "rmse_hist.png",
                 "rmse_vs_snr.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_lenses"] == 2
    assert set(summary["methods"]) == {"RIM", "WD-zeroth", "WD-gradient", "WD-curvature", "RIM+WD"}
    for m, stats in summary["methods"].items():
        assert 0 < stats["rmse"]["median"] < 0.5, m
        assert -1 <= stats["ssim"]["median"] <= 1
        assert stats["seconds"]["median"] > 0
        if m.startswith("WD") or m == "RIM+WD":  # the evidence-optimised fit is consistent with the noise
            assert 0.5 < stats["chi2_per_pixel"]["median"] < 2.0
    text = (out / "summary.md").read_text()
    assert "| RIM |" in text and "examples.png" in text
    r = _run(ROOT / "scripts" / "compare_baselines.py", "--data", tmp_path / "missing.h5", "--out", out)
    assert r.returncode == 2 and "does not exist" in r.stderr


def _write_observation(tmp_path, sim, scale=0.04):
    from astropy.io import fits

    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CDELT1"], h["CDELT2"] = -scale / 3600, scale / 3600
    h["CRPIX1"], h["CRPIX2"] = 96.5, 96.5
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    fits.PrimaryHDU(sim.image, header=h).writeto(tmp_path / "obs.fits")
    fits.PrimaryHDU(sim.psf).writeto(tmp_path / "psf.fits")
    return tmp_path / "obs.fits"


def test_reconstruct_round_trips_a_simulated_fits_observation(tmp_path, tiny_checkpoint):
    from astropy.io import fits

    sim = simulate(3, 8, SimulationConfig(preset=PRESETS["realistic"]))
    obs = _write_observation(tmp_path, sim)
    sie, shear = sim.lens.components
    lens = (f"theta_E={sie.theta_E!r},q={sie.q!r},phi={sie.phi!r},gamma={shear.gamma!r},gamma_phi={shear.phi!r},"
            f"center_x={sie.center[0]!r},center_y={sie.center[1]!r}")
    script = ROOT / "scripts" / "reconstruct.py"
    r = _run(script, "--image", obs, "--lens", lens, "--sigma", sim.sigma, "--psf", tmp_path / "psf.fits",
             "--method", "warren-dye", "--out", tmp_path / "wd")
    assert r.returncode == 0, r.stderr[-2000:]
    with fits.open(tmp_path / "wd" / "source.fits") as hdul:
        src, hdr = hdul[0].data.astype(float), hdul[0].header
    assert hdr["METHOD"] == "warren-dye" and hdr["SRC_N"] == 64 and hdr["SRC_FOV"] == 1.5
    assert hdr["SRC_X0"] == 0.0 and hdr["SRC_Y0"] == 0.0  # a given lens: the grid on the origin, as its image
    assert hdr["THETA_E"] == pytest.approx(sie.theta_E) and hdr["IMSCALE"] == pytest.approx(0.04)
    assert np.sqrt(np.mean((src - sim.source) ** 2)) < 0.05
    assert (tmp_path / "wd" / "reconstruction.png").stat().st_size > 0
    r = _run(script, "--image", obs, "--lens", lens, "--sigma", sim.sigma, "--psf-fwhm", sim.psf_fwhm,
             "--method", "rim", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "rim")
    assert r.returncode == 0, r.stderr[-2000:]
    assert fits.getdata(tmp_path / "rim" / "source.fits").shape == (64, 64)
    # bad input: a clear error, exit status 2
    (tmp_path / "bad.fits").write_text("not fits")
    for extra, msg in (((), "not a readable FITS"), (("--lens", "theta_E=1,foo=2"), "unknown lens parameter")):
        args = ["--image", tmp_path / "bad.fits" if not extra else obs, "--lens", lens, "--sigma", "0.1",
                "--out", tmp_path / "x", *extra]
        r = _run(script, *args)
        assert r.returncode == 2 and msg in r.stderr
    fits.PrimaryHDU(sim.image).writeto(tmp_path / "nowcs.fits")
    r = _run(script, "--image", tmp_path / "nowcs.fits", "--lens", lens, "--sigma", "0.1", "--out", tmp_path / "y")
    assert r.returncode == 2 and "pixel scale" in r.stderr


def test_sensitivity_script_on_a_tiny_case(tmp_path, tiny_checkpoint):
    r = _run(ROOT / "scripts" / "lens_error_sensitivity.py", "--out", tmp_path / "s", "--lenses", "1",
             "--levels", "0.05", "--checkpoint", tiny_checkpoint)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (tmp_path / "s" / "sensitivity.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 1 + 4  # header, exact lens, four parameters at one level
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 0
