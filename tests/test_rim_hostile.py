"""Hostile input to the RIM (issue 12): safe loading, devices, reconstruct's units and edge cases,
training settings and resume (CPU, tiny models)."""

import importlib.util
import math
import pathlib
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import lensinv
import rim
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid
from rim import RIM, RIMConfig, load_pretrained, resolve_device
from rim.train import TrainConfig, load_checkpoint, save_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
IMG, SRC = ImageGrid(24, 0.1), SourceGrid(8, 1.0)
TINY = RIMConfig(steps=3, embed=4, hidden1=6, hidden2=4, kernel=3, source_n=8, image_n=24)
TRAIN_MODEL = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3)


def _op(psf=True):
    lens = Lens(SIE(0.8, 0.7, 0.4), ExternalShear(0.05, 1.0))
    return lensinv.operator(lens, IMG, SRC, psf=lensinv.gaussian_psf(0.15, 0.1) if psf else None, supersample=2)


def _source():
    x, y = SRC.coordinates()
    return np.exp(-((x - 0.1) ** 2 + (y + 0.05) ** 2) / 0.08)


def _model(seed=0):
    torch.manual_seed(seed)
    return RIM(TINY).eval()


def _checkpoint(path):
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(path, model, opt, sched, 3, TrainConfig(model=TINY))
    return model


# ---------------------------------------------------------------- loading


class _Touch:
    """Unpickling this object would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "model_config": TINY.to_dict(), "payload": _Touch(marker)}, bad)
    for load in (load_checkpoint, load_pretrained):
        with pytest.raises(ValueError, match="not a safe checkpoint"):
            load(bad)
        assert not marker.exists()


def test_checkpoints_load_with_weights_only(tmp_path):
    _checkpoint(tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)  # no extra allowed globals needed
    assert ck["step"] == 3 and "numpy" in ck["rng"] and "python" in ck["rng"]
    assert load_pretrained(rim.WEIGHTS).config.source_n == 64  # the shipped weights still load


def test_load_names_the_problem(tmp_path):
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        load_pretrained(tmp_path / "d.pt")
    model = RIM(TINY)
    torch.save({"format": 1, "step": 0, "model": model.state_dict()}, tmp_path / "nocfg.pt")
    with pytest.raises(ValueError, match="model_config"):
        load_pretrained(tmp_path / "nocfg.pt")


def test_devices_are_checked(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "c.pt")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        load_pretrained(tmp_path / "c.pt", device="bogus")
    with pytest.raises(ValueError, match="device"):
        resolve_device(3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="device 'cuda.*no CUDA"):
            load_pretrained(tmp_path / "c.pt", device=name)


# ---------------------------------------------------------------- reconstruct


@pytest.mark.parametrize("c", [1000.0, 1e-3])
def test_reconstruct_is_equivariant_to_units(c, rng):
    op, model = _op(), _model()
    image = op.apply(_source()) + rng.normal(0, 0.02, IMG.shape)
    ref = model.reconstruct(op, image, 0.02)
    got = model.reconstruct(op, image * c, 0.02 * c)
    np.testing.assert_allclose(got, c * ref, rtol=1e-6, atol=1e-6 * c * np.abs(ref).max())
    smap = rng.uniform(0.01, 0.03, IMG.shape)
    ref = model.reconstruct(op, image, smap)
    np.testing.assert_allclose(model.reconstruct(op, image * c, smap * c), c * ref, rtol=1e-6,
                               atol=1e-6 * c * np.abs(ref).max())


def test_reconstruct_sigma(rng):
    op, model = _op(), _model()
    image = op.apply(_source())
    ref = model.reconstruct(op, image, 0.01)
    for tiny in (1e-30, 1e-50, 1e-300):  # all-NaN before: sigma^2 underflowed in float32
        got = model.reconstruct(op, image, tiny)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        smap = np.full(IMG.shape, tiny)
        smap[:4] *= 3
        assert np.all(np.isfinite(model.reconstruct(op, image, smap)))
    for bad in (0.0, -1.0, np.nan, np.inf, np.full(IMG.shape, 0.0)):
        with pytest.raises(ValueError, match="sigma"):
            model.reconstruct(op, image, bad)
    with pytest.raises(ValueError, match="sigma"):
        model.reconstruct(op, image, np.ones((3, 3)))


def test_reconstruct_all_zero_image_gives_zero_source():
    op, model = _op(), _model()
    out = model.reconstruct(op, np.zeros(IMG.shape), 0.1)
    assert out.shape == SRC.shape and np.all(out == 0)


class _Protocol:
    """Only the observation-operator protocol of DESIGN.md."""

    def __init__(self, op=None, matrix=None, source_grid=SRC):
        self._m = op.matrix if matrix is None else matrix
        self.source_grid = source_grid
        self.shape = self._m.shape

    @property
    def matrix(self):
        return self._m

    def apply(self, s):
        return self._m @ np.ravel(s)

    def adjoint(self, d):
        return self._m.T @ np.ravel(d)


def test_empty_operator_is_refused():
    model = _model()
    empty = sp.csr_matrix((IMG.size, SRC.size))
    lens = Lens(SIE(100.0))
    for op in (lensinv.LensOperator(empty, IMG, SRC, lens, None, 1), _Protocol(matrix=empty),
               _Protocol(matrix=sp.csr_matrix((np.zeros(3), (np.arange(3), np.arange(3))), shape=empty.shape))):
        with pytest.raises(ValueError, match="maps nothing"):
            model.reconstruct(op, np.ones(IMG.shape), 0.1)


@pytest.mark.parametrize("psf", [True, False])
def test_reconstruct_accepts_any_protocol_operator(psf, rng):
    op, model = _op(psf), _model()
    image = op.apply(_source()) + rng.normal(0, 0.01, IMG.shape)
    ref = model.reconstruct(op, image, 0.01)
    scale = np.abs(ref).max()
    for other in (_Protocol(op), _Protocol(matrix=op.matrix.toarray()), _Protocol(matrix=op.matrix.tocoo())):
        np.testing.assert_allclose(model.reconstruct(other, image.ravel(), 0.01), ref, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="complex"):
        model.reconstruct(_Protocol(matrix=op.matrix.astype(complex)), image, 0.01)
    with pytest.raises(ValueError, match="grids"):
        model.reconstruct(_Protocol(matrix=sp.csr_matrix((IMG.size, 36)), source_grid=SourceGrid(6, 1.0)), image, 0.01)
    with pytest.raises(ValueError, match="op.matrix must be"):
        model.reconstruct(_Protocol(matrix=np.array([[object()] * SRC.size] * IMG.size)), image, 0.01)
    bad = op.matrix.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.reconstruct(_Protocol(matrix=bad), image, 0.01)
    with pytest.raises(ValueError, match="lacks .shape, .apply"):
        model.reconstruct(object(), image, 0.01)


def test_reconstruct_refuses_an_image_of_the_wrong_size():
    op, model = _op(), _model()
    for shape in ((4, 4), (12, 48), (IMG.size + 1,), (2, 24, 24)):
        with pytest.raises(ValueError, match="image must have shape"):
            model.reconstruct(op, np.ones(shape), 0.1)
    assert model.reconstruct(op, np.ones(IMG.size), 0.1).shape == SRC.shape  # flat with n_data elements is fine


# ---------------------------------------------------------------- training


def _script():
    spec = importlib.util.spec_from_file_location("train_rim_script", ROOT / "scripts" / "train_rim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BASE = ["--device", "cpu", "--steps", "2", "--batch", "2", "--workers", "0", "--preset", "magnet",
        "--val-lenses", "0", "--rim-steps", "2", "--embed", "4", "--hidden1", "4", "--hidden2", "4"]


@pytest.mark.parametrize("flag,value", [("--checkpoint-every", "0"), ("--log-every", "0"), ("--val-every", "0"),
                                        ("--decay-steps", "0"), ("--batch", "0"), ("--steps", "-1"),
                                        ("--seed", "-1"), ("--clip", "nan"), ("--clip", "0"), ("--lr", "inf"),
                                        ("--decay-rate", "0"), ("--workers", "-1")])
def test_script_rejects_bad_settings_at_parse_time(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        _script().main([*BASE, "--out", str(out), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_script_out_and_resume_errors(tmp_path, capsys):
    main = _script().main
    (tmp_path / "file").write_text("keep")
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--out", str(tmp_path / "file")])
    assert exc.value.code == 2 and "not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep"
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--out", str(tmp_path / "none"), "--resume"])
    assert exc.value.code == 2 and "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--out", str(tmp_path / "r"), "--device", "bogus"])
    assert exc.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("checkpoint_every", 0), ("log_every", 0), ("val_every", 0),
                                         ("decay_steps", 0.0), ("batch", 0), ("steps", -1), ("seed", -1),
                                         ("clip", math.nan), ("clip", math.inf), ("lr", 0.0), ("decay_rate", 1.5),
                                         ("workers", -1), ("val_lenses", -1), ("batch", 2.0), ("steps", True),
                                         ("preset", "nope")])
def test_train_config_validates_its_fields(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_config_stores_plain_numbers(tmp_path):
    cfg = TrainConfig(seed=np.int64(3), lr=np.float32(1e-3), steps=np.int32(5), decay_steps=100, model=TINY)
    assert type(cfg.seed) is int and type(cfg.steps) is int and type(cfg.lr) is float and type(cfg.decay_steps) is float
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1, cfg)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["train_config"]["seed"] == 3


def test_train_refuses_bad_runs_before_any_work(tmp_path):
    cfg = TrainConfig(preset="magnet", batch=2, steps=2, workers=0, val_lenses=0, model=TRAIN_MODEL)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ValueError, match="not a directory"):
        train(cfg, tmp_path / "file")
    with pytest.raises(ValueError, match="no checkpoint"):
        train(cfg, tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="device"):
        train(cfg, tmp_path / "dev", device="bogus")


def test_a_nan_model_is_never_checkpointed(tmp_path):
    model = RIM(TINY)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with torch.no_grad():
        model.out.bias.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="NaN"):
        save_checkpoint(tmp_path / "c.pt", model, opt, sched, 1, TrainConfig(model=TINY))
    assert not (tmp_path / "c.pt").exists()


def test_resume_applies_a_new_lr_records_it_and_never_saves_a_diverged_update(tmp_path, monkeypatch):
    cfg = TrainConfig(preset="magnet", batch=2, steps=2, workers=0, val_lenses=0, checkpoint_every=1, lr=1e-3,
                      model=TRAIN_MODEL)
    run = tmp_path / "run"
    train(cfg, run)
    assert load_checkpoint(run / "checkpoint.pt")["changes"] == []
    # the checkpoint is at step 2: asking for 2 (or fewer) steps is an explicit "nothing to do"
    for steps in (1, 2):
        with pytest.raises(ValueError, match="nothing to do"):
            train(TrainConfig(**{**cfg.to_dict(), "steps": steps, "model": TRAIN_MODEL}), run, resume=True)
    # a new lr applies from the resumed step on, and is recorded
    new = TrainConfig(**{**cfg.to_dict(), "steps": 3, "lr": 2e-3, "model": TRAIN_MODEL})
    train(new, run, resume=True)
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["step"] == 3 and ck["train_config"]["lr"] == 2e-3
    assert ck["changes"] == [{"step": 2, "setting": "lr", "old": 1e-3, "new": 2e-3}]
    assert math.isclose(ck["optimizer"]["param_groups"][0]["lr"], 2e-3 * 0.96 ** (3 / 5000.0), rel_tol=1e-12)
    # an update that makes a parameter NaN (finite loss and gradient before it): the run stops and the
    # step-3 checkpoint stays intact
    step = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = math.nan
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(FloatingPointError, match="not checkpointed"):
        train(TrainConfig(**{**new.to_dict(), "steps": 5, "model": TRAIN_MODEL}), run, resume=True)
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_script_exit_codes_for_resume_problems(tmp_path, capsys, monkeypatch):
    main = _script().main
    run = tmp_path / "run"
    assert main([*BASE, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main([*BASE, "--out", str(run), "--resume", "--steps", "1"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, clip: torch.tensor(math.inf))
    assert main([*BASE, "--out", str(run), "--resume", "--steps", "3"]) == 1
    assert "diverged" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
