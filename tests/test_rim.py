"""The RIM: torch physics, model, training, checkpoints (CPU)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lensinv
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid
from rim import RIM, BatchedOperator, RIMConfig, load_pretrained
from rim.data import StepBatches
from rim.train import TrainConfig, load_checkpoint, save_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
IMG, SRC = ImageGrid(24, 0.1), SourceGrid(8, 1.0)
TINY = RIMConfig(steps=3, embed=4, hidden1=6, hidden2=4, kernel=3, source_n=8, image_n=24)


def _ops(rng, b=3, psf=True):
    ops = []
    for _ in range(b):
        lens = Lens(SIE(rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0), rng.uniform(0, 3)),
                    ExternalShear(rng.uniform(0, 0.1), rng.uniform(0, 3)))
        ops.append(lensinv.operator(lens, IMG, SRC, psf=lensinv.gaussian_psf(0.15, 0.1) if psf else None,
                                    supersample=2))
    return ops


@pytest.mark.parametrize("factored", [True, False])
def test_batched_physics_matches_scipy_and_autograd(rng, factored):
    ops = _ops(rng)
    ops[1] = lensinv.operator(ops[1].lens, IMG, SRC, psf=None, supersample=2)  # a lens without PSF in the batch
    if factored:  # L and a per-lens convolution
        bop = BatchedOperator.from_scipy([o.L for o in ops], IMG.n, SRC.n, dtype=torch.float64,
                                         psfs=[o.psf for o in ops])
        assert bop.psf is not None
    else:  # formed F L
        bop = BatchedOperator.from_scipy([o.matrix for o in ops], IMG.n, SRC.n, dtype=torch.float64)
    s = rng.uniform(size=(3, SRC.n, SRC.n))
    d = rng.normal(size=(3, IMG.n, IMG.n))
    got = bop.apply(torch.from_numpy(s)).numpy()
    for b, o in enumerate(ops):
        np.testing.assert_allclose(got[b], o.apply(s[b]), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bop.adjoint(torch.from_numpy(d))[b].numpy(), o.adjoint(d[b]), rtol=1e-12, atol=1e-14)
    for sigma in (torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64),
                  torch.from_numpy(rng.uniform(0.1, 1.0, size=(3, IMG.n, IMG.n)))):
        x = torch.from_numpy(s).requires_grad_(True)
        sig = sigma if sigma.ndim == 3 else sigma[:, None, None]
        chi2 = 0.5 * (((bop.apply(x) - torch.from_numpy(d)) / sig) ** 2).sum()
        chi2.backward()
        np.testing.assert_allclose(bop.chi2_gradient(torch.from_numpy(s), torch.from_numpy(d), sigma).numpy(),
                                   x.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="source"):
        bop.apply(torch.zeros(2, SRC.n, SRC.n, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        bop.chi2_gradient(torch.from_numpy(s), torch.from_numpy(d), torch.ones(2, dtype=torch.float64))


def test_model_shapes_and_default_architecture(rng):
    ops = _ops(rng, 2)
    bop = BatchedOperator.from_scipy([o.matrix for o in ops], IMG.n, SRC.n)
    for cfg in (TINY, RIMConfig(**{**TINY.to_dict(), "downsample": False})):
        model = RIM(cfg)
        out = model(torch.zeros(2, IMG.n, IMG.n), bop, torch.ones(2))
        assert len(out) == cfg.steps and all(o.shape == (2, SRC.n, SRC.n) for o in out)
    seed = RIM(RIMConfig())
    assert seed.gru1.hidden == 128 and seed.embed.out_channels == 32 and seed.config.steps == 10
    assert seed.embed.kernel_size == (5, 5) and seed.out.out_channels == 1
    with pytest.raises(ValueError, match="kernel"):
        RIMConfig(kernel=4)


def test_training_steps_reduce_the_loss_on_a_fixed_batch(rng):
    torch.manual_seed(0)
    ops = _ops(rng, 4)
    bop = BatchedOperator.from_scipy([o.matrix for o in ops], IMG.n, SRC.n)
    x, y = SRC.coordinates()
    src = torch.tensor(np.stack([np.exp(-((x - rng.uniform(-0.2, 0.2)) ** 2 + y**2) / 0.05) for _ in ops]),
                       dtype=torch.float32)
    img = bop.apply(src).detach()
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = sum(((e - src) ** 2).sum(dim=(1, 2)).mean() for e in model(img, bop, torch.full((4,), 0.01)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_step_batches_split_ranks_and_epochs():
    a = StepBatches(3, start=0, rank=0, world=2)
    b = StepBatches(3, start=0, rank=1, world=2)
    assert a.indices(0) == [0, 1, 2] and b.indices(0) == [3, 4, 5] and a.indices(1) == [6, 7, 8]
    f = StepBatches(4, length=10, seed=1)
    seen = [i for k in range(5) for i in f.indices(k)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert StepBatches(4, start=2, length=10, seed=1).indices(2) == f.indices(2)


def _tiny_args(out, steps, extra=()):
    return [sys.executable, str(ROOT / "scripts" / "train_rim.py"), "--device", "cpu", "--out", str(out),
            "--steps", str(steps), "--batch", "2", "--workers", "0", "--preset", "magnet", "--checkpoint-every", "2",
            "--val-lenses", "2", "--val-every", "3", "--log-every", "1", "--rim-steps", "2", "--embed", "4",
            "--hidden1", "4", "--hidden2", "4", "--lr", "1e-3", *extra]


def _losses(out):
    with open(Path(out) / "log.csv") as f:
        rows = list(csv.DictReader(f))
    last = {}
    for r in rows:
        last[int(r["step"])] = float(r["loss"])
    return [last[k] for k in sorted(last)]


@pytest.mark.slow
def test_kill_and_resume_reproduce_the_loss_sequence(tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(_tiny_args(ref, 6), capture_output=True).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen(_tiny_args(run, 6), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pt").exists() and len(_losses(run)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoint.pt").exists()
    step_killed = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step_killed < 6, "the run finished before it could be killed"
    r = subprocess.run(_tiny_args(run, 6, ["--resume"]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_losses(run), _losses(ref))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    # a run folder with a checkpoint is not overwritten without --resume
    r = subprocess.run(_tiny_args(run, 6), capture_output=True, text=True)
    assert r.returncode == 2 and "resume" in r.stderr
    # nor resumed with another architecture
    r = subprocess.run(_tiny_args(run, 8, ["--resume", "--hidden1", "8"]), capture_output=True, text=True)
    assert r.returncode == 2 and "another configuration" in r.stderr


def test_sigterm_checkpoints_the_step_it_finishes(tmp_path):
    """SIGTERM (``timeout``, a batch system) lets the run finish its step, checkpoint it (here between
    the --checkpoint-every steps) and exit 130; --resume then gives the uninterrupted run's losses."""
    args = ["--checkpoint-every", "100"]
    ref = tmp_path / "ref"
    assert subprocess.run(_tiny_args(ref, 8, args), capture_output=True).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen(_tiny_args(run, 8, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ((run / "log.csv").exists() and len(_losses(run)) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "--resume" in err
    stopped = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 2 <= stopped < 8, "the run finished before the signal"
    assert len(_losses(run)) == stopped
    r = subprocess.run(_tiny_args(run, 8, [*args, "--resume"]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_losses(run), _losses(ref))


def test_two_process_ddp_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_tiny_args(tmp_path / "ddp", 2)[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["step"] == 2 and len(_losses(tmp_path / "ddp")) == 2


def test_checkpoints_and_load_pretrained(tmp_path, rng):
    cfg = TrainConfig(model=TINY)
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path / "c.pt", model, opt, sched, 7, cfg)
    loaded = load_pretrained(tmp_path / "c.pt")
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    op = _ops(rng, 1)[0]
    est = loaded.reconstruct(op, np.zeros(IMG.shape), 0.1)
    assert est.shape == SRC.shape and est.dtype == np.float64
    bad = np.zeros(IMG.shape)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loaded.reconstruct(op, bad, 0.1)
    with pytest.raises(ValueError, match="shape"):
        loaded.reconstruct(op, np.zeros((5, 5)), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        loaded.reconstruct(op, np.zeros(IMG.shape), -1.0)
    other = lensinv.operator(op.lens, ImageGrid(30, 0.1), SRC)
    with pytest.raises(ValueError, match="grids"):
        loaded.reconstruct(other, np.zeros((30, 30)), 0.1)
    # a checkpoint whose weights do not fit its recorded architecture
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    ck["model_config"]["hidden1"] = 9
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="architecture"):
        load_pretrained(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="checkpoint"):
        load_pretrained(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path / "missing.pt")


def test_shipped_weights_beat_the_zero_image():
    from lensinv.simulate import PRESETS, SimulationConfig, simulate

    model = load_pretrained()
    assert model.config.source_n == 64 and model.config.image_n == 192
    errs = []
    for i in range(3):
        sim = simulate(i, 424242, SimulationConfig(preset=PRESETS["realistic"]))
        est = model.reconstruct(sim.op, sim.image, sim.sigma)
        errs.append((np.sqrt(np.mean((est - sim.source) ** 2)), np.sqrt(np.mean(sim.source**2))))
    for rec, zero in errs:
        assert rec < 0.8 * zero


def test_training_from_a_data_file(tmp_path):
    import pickle

    from lensinv.dataset import LensDataset, build_dataset
    from lensinv.simulate import PRESETS, SimulationConfig

    data = build_dataset(tmp_path / "m.h5", 4, 3, SimulationConfig(preset=PRESETS["magnet"]))
    ds = LensDataset(data)
    ds[0]  # opens the file
    assert pickle.loads(pickle.dumps(ds))[1].index == 1  # picklable for DataLoader workers
    cfg = TrainConfig(preset="magnet", data=str(data), batch=2, steps=2, workers=0, val_lenses=0,
                      model=RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3))
    losses = train(cfg, tmp_path / "run")
    assert len(losses) == 2 and all(np.isfinite(losses))
    with pytest.raises(ValueError, match="preset"):
        train(TrainConfig(**{**cfg.to_dict(), "preset": "realistic", "model": cfg.model}), tmp_path / "run2")
    with pytest.raises(ValueError, match="grids"):
        train(TrainConfig(**{**cfg.to_dict(), "model": RIMConfig(source_n=32, steps=1)}), tmp_path / "run3")


def test_training_can_start_from_existing_weights(tmp_path):
    """init: the run starts from given weights (fresh optimiser); another architecture is refused."""
    from lensinv.dataset import build_dataset
    from lensinv.simulate import PRESETS, SimulationConfig
    from rim.train import load_checkpoint

    data = build_dataset(tmp_path / "m.h5", 4, 3, SimulationConfig(preset=PRESETS["magnet"]))
    arch = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3)
    base = TrainConfig(preset="magnet", data=str(data), batch=2, steps=2, workers=0, val_lenses=0, model=arch)
    train(base, tmp_path / "first")
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt")["model"]
    tiny_lr = TrainConfig(**{**base.to_dict(), "model": arch, "steps": 1, "lr": 1e-30, "seed": 9,
                             "init": str(tmp_path / "first" / "checkpoint.pt")})
    train(tiny_lr, tmp_path / "second")
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")
    for k, v in first.items():  # a step at lr 1e-30 leaves the initial weights: those of the first run
        torch.testing.assert_close(second["model"][k], v, rtol=1e-6, atol=1e-12)
    assert second["train_config"]["init"].endswith("checkpoint.pt")
    other = TrainConfig(**{**tiny_lr.to_dict(), "model": RIMConfig(steps=3, embed=4, hidden1=4, hidden2=4, kernel=3)})
    with pytest.raises(ValueError, match="another architecture"):
        train(other, tmp_path / "third")


def test_robust_scale_is_the_peak_of_the_median_filtered_image(rng):
    from scipy.ndimage import median_filter

    from rim.model import data_scale, robust_scale

    imgs = rng.normal(size=(3, 17, 17))
    imgs[0, 4, 5] = 1e3  # a hot pixel does not set the scale
    imgs[1, 0, 0] = 7.0  # nor does a corner one (edges replicate, as mode="nearest")
    want = [median_filter(np.abs(x), size=3, mode="nearest").max() for x in imgs]
    got = robust_scale(torch.as_tensor(imgs))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert got[0] < 10
    spike = np.zeros((1, 9, 9))
    spike[0, 4, 4] = -2.0  # median filter removes it: falls back to max |x|
    assert float(robust_scale(torch.as_tensor(spike))[0]) == 2.0
    np.testing.assert_allclose(robust_scale(torch.as_tensor(5.0 * imgs)).numpy(), 5.0 * got.numpy(), rtol=1e-12)
    assert float(data_scale(torch.zeros(1, 9, 9))[0]) == 1.0


def test_training_sees_the_data_as_reconstruct_does(rng):
    """The validation RMSE of training (normalised data) is the RMSE of model.reconstruct on the same
    lenses, and does not change when the lenses' unit does."""
    from rim.train import validate

    torch.manual_seed(1)
    ops = _ops(rng, 3)
    x, y = SRC.coordinates()
    src = np.stack([np.exp(-((x - rng.uniform(-0.2, 0.2)) ** 2 + y**2) / 0.05) for _ in ops])
    sig = np.array([0.01, 0.02, 0.05])
    img = np.stack([o.apply(s).reshape(IMG.n, IMG.n) + rng.normal(0, e, (IMG.n, IMG.n))
                    for o, s, e in zip(ops, src, sig)])
    model = RIM(TINY)
    # training validates one pass of the network (reconstruct's default averages over 8 symmetries)
    want = np.median([np.sqrt(np.mean((model.reconstruct(o, i, e, transforms=1) - s) ** 2))
                      for o, i, e, s in zip(ops, img, sig, src)])

    def batch(c):
        return {"source": c * src, "image": c * img, "sigma": c * sig, "matrices": [o.L for o in ops],
                "psfs": [o.psf for o in ops]}

    got = validate(model, [batch(1.0)], "cpu", normalize=True)
    assert got == pytest.approx(want, rel=1e-4)
    assert validate(model, [batch(1000.0)], "cpu", normalize=True) == pytest.approx(1000.0 * got, rel=1e-4)
    raw = validate(model, [batch(1000.0)], "cpu", normalize=False)
    assert abs(raw - 1000.0 * got) > 0.01 * 1000.0 * got  # without normalisation the unit matters


def test_runs_from_before_normalisation_resume_only_without_it(tmp_path):
    from lensinv.dataset import build_dataset
    from lensinv.simulate import PRESETS, SimulationConfig

    data = build_dataset(tmp_path / "m.h5", 4, 3, SimulationConfig(preset=PRESETS["magnet"]))
    arch = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3)
    base = TrainConfig(preset="magnet", data=str(data), batch=2, steps=1, workers=0, val_lenses=0, model=arch)
    train(base, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    ck = load_checkpoint(path)
    assert ck["train_config"]["normalize"] is True
    del ck["train_config"]["normalize"]  # as written before the setting existed
    torch.save(ck, path)
    more = TrainConfig(**{**base.to_dict(), "model": arch, "steps": 2})
    with pytest.raises(ValueError, match="--no-normalize"):
        train(more, tmp_path / "run", resume=True)
    train(TrainConfig(**{**more.to_dict(), "model": arch, "normalize": False}), tmp_path / "run", resume=True)
    assert load_checkpoint(path)["step"] == 2
    with pytest.raises(ValueError, match="normalize must be a bool"):
        TrainConfig(normalize=1)


@pytest.mark.parametrize("size", [11, 15, 31])
def test_fft_blur_matches_the_convolution(rng, size):
    """The CPU blur for larger kernels (an FFT product) equals scipy's convolve2d(mode="same") and its
    adjoint the correlation, per lens and with one kernel for the batch."""
    from scipy.signal import convolve2d, correlate2d

    from rim.physics import _FFT_FROM, _fft_blur

    assert size >= _FFT_FROM
    img = rng.normal(size=(3, 24, 24))
    k = rng.uniform(size=(3, size, size))
    for adjoint, ref in ((False, convolve2d), (True, correlate2d)):
        got = _fft_blur(torch.as_tensor(img), torch.as_tensor(k), adjoint).numpy()
        want = np.stack([ref(img[b], k[b], mode="same") for b in range(3)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
        shared = _fft_blur(torch.as_tensor(img), torch.as_tensor(k[:1]), adjoint).numpy()
        np.testing.assert_allclose(shared[2], ref(img[2], k[0], mode="same"), rtol=0, atol=1e-12 * np.abs(want).max())
    # and the operator uses it: BatchedOperator against the numpy operator with a large PSF
    ops = [lensinv.operator(Lens(SIE(0.7, 0.8, 0.3)), IMG, SRC, psf=lensinv.gaussian_psf(0.4, 0.1, size=size),
                            supersample=2) for _ in range(2)]
    bop = BatchedOperator.from_scipy([o.L for o in ops], IMG.n, SRC.n, dtype=torch.float64, psfs=[o.psf for o in ops])
    s = rng.normal(size=(2, SRC.n, SRC.n))
    d = rng.normal(size=(2, IMG.n, IMG.n))
    for b, o in enumerate(ops):
        np.testing.assert_allclose(bop.apply(torch.as_tensor(s))[b].numpy().ravel(), o.apply(s[b]).ravel(),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(bop.adjoint(torch.as_tensor(d))[b].numpy().ravel(), o.adjoint(d[b]).ravel(),
                                   rtol=0, atol=1e-12)


def test_split_and_join_checkpoint(tmp_path):
    """A checkpoint split into weights.pt and optimizer.pt (for size-limited transfers) joins back to
    the same contents; parts of different steps are refused; weights.pt loads as weights."""
    from rim.train import join_checkpoint, split_checkpoint

    torch.manual_seed(0)
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.zeros(1, IMG.n, IMG.n), BatchedOperator.from_scipy([_ops(np.random.default_rng(0), 1)[0].L], IMG.n,
                                                                   SRC.n), torch.ones(1))[-1].sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, sched, 7, TrainConfig(model=TINY))
    weights, optim = split_checkpoint(path, tmp_path / "parts")
    assert "optimizer" not in load_checkpoint(weights) and load_checkpoint(optim)["optimizer"]["state"]
    joined = load_checkpoint(join_checkpoint(tmp_path / "parts", tmp_path / "joined.pt"))
    original = load_checkpoint(path)
    assert set(joined) == set(original) and joined["step"] == 7
    for k, v in original["model"].items():
        torch.testing.assert_close(joined["model"][k], v, rtol=0, atol=0)
    for i, st in original["optimizer"]["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(joined["optimizer"]["state"][i][name], v, rtol=0, atol=0)
    assert load_pretrained(weights).config == TINY
    save_checkpoint(path, model, opt, sched, 8, TrainConfig(model=TINY))
    split_checkpoint(path, tmp_path / "other")
    (tmp_path / "other" / "optimizer.pt").replace(tmp_path / "parts" / "optimizer.pt")
    with pytest.raises(ValueError, match="step"):
        join_checkpoint(tmp_path / "parts", tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no optimiser state"):
        split_checkpoint(weights, tmp_path / "again")


def test_gru_zero_state_skips_its_channels():
    """``ConvGRUCell(x, None)`` (the zero state, whose channels the convolutions skip) equals the cell
    with an explicit zero state, values and gradients, and the RIM starts from it."""
    from rim.model import ConvGRUCell

    torch.manual_seed(0)
    cell = ConvGRUCell(6, 10, 5).double()
    x = torch.randn(3, 6, 12, 12, dtype=torch.float64, requires_grad=True)
    fast = cell(x, None)
    (gx_fast,) = torch.autograd.grad(fast.square().sum(), x)
    slow = cell(x, torch.zeros(3, 10, 12, 12, dtype=torch.float64))
    (gx_slow,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gx_fast, gx_slow, rtol=1e-13, atol=1e-14)
    for h in (None, torch.zeros(3, 10, 12, 12, dtype=torch.float64)):
        cell.zero_grad()
        cell(x, h).square().sum().backward()
        grads = [p.grad.clone() for p in cell.parameters()]
        if h is None:
            first = grads
    for a, b in zip(first, grads):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert not torch.equal(cell(x, torch.ones(3, 10, 12, 12, dtype=torch.float64)), fast)  # the state matters
