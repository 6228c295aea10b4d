"""The alma preset: simulated ALMA-like visibilities, their data sets (format 3), training the RIM
on them and compare_baselines.py on them (a tiny interferometer and grids, so each test is fast)."""

import json
import math

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("finufft")

import lensinv  # noqa: E402
from lensinv.dataset import LensDataset, build_dataset  # noqa: E402
from lensinv.simulate import (PRESET_SOURCES, PRESETS, LensPrior, ObservationPreset, SimulationConfig,  # noqa: E402
                              simulate, simulation_config)
from lensinv.sources import ProceduralSources  # noqa: E402
from lensinv.uv import InterferometerConfig  # noqa: E402
from rim import RIM, RIMConfig  # noqa: E402
from rim.data import collate, sample, to_device  # noqa: E402
from rim.physics import BatchedVisibilityOperator  # noqa: E402
from rim.train import TrainConfig, load_checkpoint, save_checkpoint, train  # noqa: E402

from .conftest import script_module

SMALL_ARRAY = InterferometerConfig(configuration="compact", n_antennas=8, hour_angle=(-1.0, 1.0),
                                   integration_time=1800.0, frequencies=(224e9, 240e9))
# named alma so that the trainer accepts its files as alma data
TINY = ObservationPreset(name="alma", image_grid=lensinv.ImageGrid(24, 0.1), source_grid=lensinv.SourceGrid(8, 1.0),
                         supersample=2, snr=(20.0, 100.0), interferometer=SMALL_ARRAY)
CFG = SimulationConfig(preset=TINY, lens_prior=LensPrior(theta_E=(0.3, 0.8)), sources=ProceduralSources())
TINY_RIM = RIMConfig(steps=2, embed=4, hidden1=6, hidden2=4, kernel=3, source_n=8, image_n=24)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("alma") / "a.h5", 3, 5, CFG, part_size=2)


def test_the_alma_preset():
    pre = PRESETS["alma"]
    assert pre.interferometer is not None and pre.psf_fwhm is None and pre.snr == (10.0, 200.0)
    cov = pre.interferometer.simulated()
    assert 1e4 <= cov.n_vis <= 1e5  # a CPU-trainable number of visibilities
    assert np.abs(cov.uv).max() * pre.image_grid.pixel_scale * lensinv.visibility.ARCSEC < 0.5  # Nyquist-sampled
    assert pre.interferometer.simulated() is cov  # computed once per process
    assert PRESET_SOURCES["alma"] == "galaxies"  # the real-galaxy mix of the training split (slow to load here)
    desc = json.loads(simulation_config("alma", "procedural").to_json())
    assert desc["preset"]["interferometer"]["configuration"] == "extended"
    # imaging presets keep the JSON of the files written before the interferometer existed
    assert "interferometer" not in json.loads(simulation_config("realistic").to_json())["preset"]
    with pytest.raises(ValueError, match="psf_fwhm"):
        ObservationPreset(name="x", psf_fwhm=(0.1, 0.1), interferometer=SMALL_ARRAY)
    with pytest.raises(ValueError, match="configuration"):
        InterferometerConfig(configuration="huge")
    with pytest.raises(ValueError, match="frequencies"):
        InterferometerConfig(frequencies=(230e9, -1.0))


@pytest.mark.slow
def test_simulated_visibilities():
    sim = simulate(2, 5, CFG)
    again = simulate(2, 5, CFG)
    np.testing.assert_array_equal(sim.visibilities, again.visibilities)
    op = sim.op
    assert isinstance(op, lensinv.VisibilityOperator) and op.primary_beam is not None
    n_vis = op.coverage.n_vis
    assert sim.visibilities.shape == (n_vis,) and sim.psf is None
    # the image is the dirty image of the visibilities; sigma sets the dirty image's peak S/N
    d = op.dirty(sim.visibilities, sim.sigma)
    np.testing.assert_allclose(sim.image, d.image, rtol=0, atol=1e-12 * np.abs(d.image).max())
    clean = op.dirty(op.apply(sim.source), sim.sigma)
    assert clean.image.max() / clean.sigma == pytest.approx(sim.snr, rel=1e-9)
    assert clean.sigma == pytest.approx(sim.sigma / math.sqrt(n_vis), rel=1e-12)
    # the noise per real and imaginary part is sigma
    resid = sim.visibilities - op.apply(sim.source)
    assert np.std(np.concatenate([resid.real, resid.imag])) == pytest.approx(sim.sigma, rel=0.15)
    # what the trainer gets: the dirty image, its noise and the normalised beam, without a NUFFT
    s = sample(sim)
    assert s.image is sim.image and s.sigma == pytest.approx(d.sigma) and s.psf is None
    np.testing.assert_allclose(s.beam, d.beam, rtol=0, atol=1e-6)


def test_data_set_round_trip(data, tmp_path):
    with h5py.File(data, "r") as f:
        assert f.attrs["lensinv_format"] == 3 and "psf" not in f
        assert f["vis"].dtype == np.complex64 and f["vis"].fletcher32 and f["uv/uv"].shape[1] == 2
    with LensDataset(data) as ds:
        assert len(ds) == 3 and ds.coverage is not None and ds.primary_beam is not None
        for i in range(3):
            ex, sim = ds[i], simulate(i, 5, CFG)
            assert ex.index == i and ex.sigma == sim.sigma and ex.snr == sim.snr
            np.testing.assert_array_equal(ex.visibilities, sim.visibilities.astype(np.complex64))
            np.testing.assert_array_equal(ex.image, sim.image.astype(np.float32))
            np.testing.assert_array_equal(ex.coverage.uv, sim.coverage.uv)
            np.testing.assert_array_equal(ex.primary_beam, sim.primary_beam)
            assert ex.data is ex.visibilities and ex.coverage is ds.coverage  # one coverage: one beam cache
            op = ex.operator()
            assert isinstance(op, lensinv.VisibilityOperator) and (op.L != sim.op.L).nnz == 0
    # shards concatenate; an imaging file is still format 2
    parts = [build_dataset(tmp_path / f"s{k}.h5", 3, 5, CFG, shard=(k, 2)) for k in range(2)]
    with LensDataset(parts) as ds:
        np.testing.assert_array_equal(ds[2].visibilities, LensDataset(data)[2].visibilities)
    imaging = build_dataset(tmp_path / "img.h5", 1, 5, SimulationConfig(preset=ObservationPreset(
        name="img", image_grid=TINY.image_grid, source_grid=TINY.source_grid, supersample=1),
        lens_prior=CFG.lens_prior, sources=CFG.sources))
    with h5py.File(imaging, "r") as f:
        assert f.attrs["lensinv_format"] == 2 and "vis" not in f and "uv" not in f
    with pytest.raises(ValueError, match="store_operators"):
        build_dataset(tmp_path / "ops.h5", 2, 5, CFG, store_operators=True)


def test_corrupt_visibilities_are_refused(data, tmp_path):
    with h5py.File(data, "r") as f:
        chunk = f["vis"].id.get_chunk_info_by_coord((1, 0))
    raw = bytearray(data.read_bytes())
    at = chunk.byte_offset + chunk.size // 2
    raw[at:at + 16] = bytes(16)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.h5 cannot be read.*filter"):  # opening reads lens 1's visibilities
        LensDataset(bad)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(data.read_bytes())
    with h5py.File(broken, "r+") as f:
        del f["uv/uv"]
    with pytest.raises(ValueError, match="uv/uv"):
        LensDataset(broken)


def test_batched_physics_of_a_stored_batch_matches_the_operators(data):
    with LensDataset(data) as ds:
        exs = [ds[i] for i in range(3)]
    src, img, sig, bop = to_device(collate([sample(ex) for ex in exs]), 24, 8, "cpu")
    assert isinstance(bop, BatchedVisibilityOperator) and bop.spectra.shape[0] == 1  # one shared beam
    s = torch.rand(3, 8, 8)
    g = bop.chi2_gradient(s, img, sig).double().numpy()
    for b, ex in enumerate(exs):
        op = ex.op
        ref = op.adjoint((op.apply(s[b].double().numpy()) - ex.visibilities) / ex.sigma**2)
        assert np.linalg.norm(g[b].ravel() - ref) <= 1e-4 * np.linalg.norm(ref)  # float32 dirty images


def test_a_tiny_training_run_on_alma_data(data, tmp_path):
    config = TrainConfig(preset="alma", data=str(data), batch=2, steps=2, val_lenses=0, workers=0,
                         checkpoint_every=1, log_every=1, model=TINY_RIM, lr=1e-3)
    losses = train(config, tmp_path / "run")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["step"] == 2 and ck["train_config"]["preset"] == "alma"
    more = train(TrainConfig(**{**config.__dict__, "steps": 3}), tmp_path / "run", resume=True)
    assert len(more) == 1


@pytest.fixture(scope="module")
def cmp():
    return script_module("compare_baselines")


def test_compare_baselines_on_visibilities(cmp, data, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    model = RIM(TINY_RIM)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(ckpt, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1,
                    TrainConfig(model=TINY_RIM))
    out = tmp_path / "cmp"
    rc = cmp.main(["--data", str(data), "--out", str(out), "--checkpoint", str(ckpt), "--forms", "gradient",
                   "--rim-wd-forms", "gradient", "--limit", "2", "--examples", "1"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_lenses"] == 2 and set(summary["methods"]) == {"RIM", "WD-gradient", "RIM+WD"}
    assert 0.5 < summary["methods"]["WD-gradient"]["chi2_per_pixel"]["median"] < 1.5  # per real datum
    text = (out / "summary.md").read_text()
    assert "uv plane" in text and (out / "examples.png").is_file()


def test_shipped_alma_weights_reconstruct_an_alma_lens():
    """rim/weights/rim_alma.pt on one lens of the alma preset's own coverage (86,688 visibilities):
    a lensed two-component source at peak dirty-image S/N ~50 is recovered (correlation with the
    truth > 0.97, total flux within 15%: the model card documents a flux bias of ~10%), and the
    reconstruction is equivariant to the flux unit."""
    import rim

    model = rim.load_pretrained(rim.ALMA_WEIGHTS)
    pre = PRESETS["alma"]
    cfg, ig, sg = pre.interferometer, pre.image_grid, pre.source_grid
    lens = lensinv.Lens(lensinv.SIE(1.2, 0.8, 0.3), lensinv.ExternalShear(0.02, 1.0))
    op = lensinv.visibility_operator(lens, cfg.simulated().coverage, ig, sg, supersample=2,
                                     primary_beam=cfg.primary_beam_map(ig))
    x, y = sg.coordinates()
    src = np.exp(-0.5 * ((x - 0.05) ** 2 + y ** 2 / 0.7) / 0.12 ** 2) + 0.4 * np.exp(
        -0.5 * ((x + 0.15) ** 2 + (y - 0.1) ** 2) / 0.05 ** 2)
    model_vis = op.apply(src)
    rng = np.random.default_rng(0)
    sigma = 1.0
    noise = sigma * (rng.standard_normal(model_vis.shape) + 1j * rng.standard_normal(model_vis.shape))
    # source flux for a peak dirty-image S/N of 50 against the dirty image of the noise alone
    k = 50 * float(np.std(op.dirty_image(noise))) / float(op.dirty_image(model_vis).max())
    vis = k * model_vis + noise
    est = model.reconstruct(op, vis, sigma)
    assert est.shape == (64, 64) and np.all(np.isfinite(est))
    assert np.corrcoef(est.ravel(), src.ravel())[0, 1] > 0.97
    assert abs(est.sum() / (k * src.sum()) - 1) < 0.15
    np.testing.assert_allclose(model.reconstruct(op, 1e-3 * vis, 1e-3 * sigma), 1e-3 * est, rtol=1e-4,
                               atol=1e-6 * np.abs(est).max())
