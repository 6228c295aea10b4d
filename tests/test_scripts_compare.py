"""compare_baselines.py on hostile input: bad lenses, bad flags, an --out that is a file."""

import csv
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lensinv
from lensinv.dataset import build_dataset
from lensinv.simulate import ObservationPreset, SimulationConfig
from rim import RIM, RIMConfig
from rim.train import TrainConfig, save_checkpoint

from .conftest import script_module

TINY = ObservationPreset(name="tiny", image_grid=lensinv.ImageGrid(32, 0.1), source_grid=lensinv.SourceGrid(16, 1.5),
                         supersample=2, psf_fwhm=(0.1, 0.2), psf_size=5, snr=(20.0, 100.0))


@pytest.fixture(scope="module")
def cmp():
    return script_module("compare_baselines")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    torch.manual_seed(0)
    cfg = RIMConfig(steps=2, embed=4, hidden1=4, hidden2=4, kernel=3, source_n=16, image_n=32)
    model = RIM(cfg)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(path, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1, TrainConfig(model=cfg))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("data") / "t.h5", 4, 7, SimulationConfig(preset=TINY))


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _main(cmp, data, out, ckpt, *extra):
    return cmp.main(["--data", str(data), "--out", str(out), "--checkpoint", str(ckpt), "--forms", "gradient",
                     *map(str, extra)])


def _corrupt_image_chunk(path: Path, k: int) -> None:
    """Overwrite lens k's compressed image chunk with garbage (h5py then raises OSError)."""
    with h5py.File(path, "r") as f:
        info = f["image"].id.get_chunk_info_by_coord((k, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)


class _BadLenses:
    """Wraps LensDataset: lens 1 has a NaN pixel, lens 2 a NaN axis ratio (the reader's error), lens 3 a
    corrupt record (h5py's OSError). Done in memory, so that the test does not depend on what the
    reader checks when it opens a file."""

    def __init__(self, real):
        self.real = real

    def __call__(self, *a, **k):
        ds = self.real(*a, **k)
        get = type(ds).__getitem__

        class Bad(type(ds)):
            def __getitem__(self, i):
                if i == 2:
                    lensinv.SIE(1.0, float("nan"))
                if i == 3:
                    raise OSError("Can't synchronously read data (filter returned failure during read)")
                ex = get(self, i)
                if i == 1:
                    img = ex.image.copy()
                    img[3, 3] = np.nan
                    ex = dataclasses.replace(ex, image=img)
                return ex

        ds.__class__ = Bad
        return ds


def test_bad_lenses_are_reported_and_the_rest_kept(cmp, tiny_data, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cmp, "LensDataset", _BadLenses(cmp.LensDataset))
    out = tmp_path / "out"
    assert _main(cmp, tiny_data, out, tiny_model, "--examples", "2") == 0
    err = capsys.readouterr().err
    for k in (1, 2, 3):
        assert f"lens {k} (position in --data) failed" in err
    assert "OSError" in err and "NaN" in err and "q" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_lenses"] == 1 and summary["n_failed"] == 3
    assert [f["position"] for f in summary["failed"]] == [1, 2, 3]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["lens"] for r in rows} == {"0"} and {r["method"] for r in rows} == {"RIM", "WD-gradient", "RIM+WD"}
    assert [r["position"] for r in csv.DictReader((out / "failed.csv").open())] == ["1", "2", "3"]
    assert "Failed (3 lenses" in (out / "summary.md").read_text()
    for name in ("examples.png", "flux.png", "rmse_hist.png", "rmse_vs_snr.png"):
        assert (out / name).stat().st_size > 0


def test_a_corrupt_record_in_the_middle_is_a_clear_error(cmp, tiny_data, tiny_model, tmp_path, capsys):
    """Real corruption of lens 1's compressed image chunk: either the reader refuses the file up front
    (exit 2, a message naming it) or the lens is reported and the others compared; never a traceback."""
    data = _copy(tiny_data, tmp_path / "bad.h5")
    _corrupt_image_chunk(data, 1)
    out = tmp_path / "out"
    rc = _main(cmp, data, out, tiny_model, "--examples", "0")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if rc == 2:
        assert str(data) in err
    else:
        assert rc == 0 and "lens 1 (position in --data) failed" in err
        assert json.loads((out / "summary.json").read_text())["n_lenses"] == 3


def test_all_lenses_bad_exits_1_with_the_failures_written(cmp, tiny_data, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(cmp, "LensDataset", lambda *a: type("All", (), {
        "__len__": lambda self: 4, "__getitem__": lambda self, i: lensinv.SIE(float("nan"))})())
    out = tmp_path / "out"
    assert _main(cmp, tiny_data, out, tiny_model) == 1
    assert json.loads((out / "summary.json").read_text())["n_failed"] == 4
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 0


def test_metrics_are_written_after_every_lens(cmp, tiny_data, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = cmp.compare_lens
    seen = []

    def interrupted_after_two(ds, i, *a, **k):
        if i == 2:  # what was done is already on disk when the run is interrupted
            seen.append({r["lens"] for r in csv.DictReader((out / "metrics.csv").open())})
            raise KeyboardInterrupt
        return real(ds, i, *a, **k)

    monkeypatch.setattr(cmp, "compare_lens", interrupted_after_two)
    assert _main(cmp, tiny_data, out, tiny_model) == 130
    assert seen == [{"0", "1"}]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["n_lenses"] == 2


@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "-1"), ("--examples", "-1"),
                                         ("--limit", "x"), ("--device", "bogus"), ("--device", "cuda:99")])
def test_bad_flags_fail_up_front_naming_the_flag(cmp, tiny_data, tiny_model, tmp_path, capsys, flag, value,
                                                 monkeypatch):
    monkeypatch.setattr(cmp, "LensDataset", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        _main(cmp, tiny_data, tmp_path / "out", tiny_model, flag, value)
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_fails_up_front(cmp, tiny_data, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cmp, "LensDataset", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        _main(cmp, tiny_data, tmp_path / "out", tiny_model, "--device", "cuda")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--device" in err and "no CUDA device is available" in err


def test_out_an_existing_file_is_refused(cmp, tiny_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    with pytest.raises(SystemExit) as e:
        _main(cmp, tiny_data, out, tiny_model)
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_limit_1_and_examples_0(cmp, tiny_data, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert _main(cmp, tiny_data, out, tiny_model, "--limit", "1", "--examples", "0") == 0
    assert json.loads((out / "summary.json").read_text())["n_lenses"] == 1
    assert not (out / "examples.png").exists() and (out / "flux.png").stat().st_size > 0
    assert "examples.png" not in (out / "summary.md").read_text()


def test_rim_transforms_and_rim_wd_mask(cmp, tiny_data, tiny_model, tmp_path):
    """--rim-transforms 1 is one pass of the network, 8 the symmetry average (different estimates);
    --rim-wd-mask arcs inverts the arc mask for RIM+WD while Warren-Dye keeps all pixels."""
    rmse = {}
    for k in (1, 8):
        out = tmp_path / f"t{k}"
        assert _main(cmp, tiny_data, out, tiny_model, "--limit", "2", "--examples", "0", "--rim-transforms", k,
                     "--rim-wd-forms", "curvature", "--rim-wd-mask", "arcs" if k == 8 else "same") == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rim_transforms"] == k
        rmse[k] = summary["methods"]["RIM"]["rmse"]["median"]
        text = (out / "summary.md").read_text()
        assert ("mean over 8 turns" in text) == (k == 8) and ("RIM+WD: on the data-driven arc mask" in text) == (k == 8)
    assert rmse[1] != rmse[8]
    with pytest.raises(SystemExit):
        _main(cmp, tiny_data, tmp_path / "bad", tiny_model, "--rim-transforms", 3)
