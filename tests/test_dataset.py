"""Data-set building (determinism, resume, refusal) and reading."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lensinv import ImageGrid, SourceGrid
from lensinv.dataset import LensDataset, build_dataset, shard_range
from lensinv.simulate import ObservationPreset, SimulationConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ObservationPreset(name="small", image_grid=ImageGrid(48, 0.12), source_grid=SourceGrid(24, 1.5),
                          supersample=2, psf_fwhm=(0.1, 0.3), psf_size=9, snr=(10.0, 200.0))
CFG = SimulationConfig(preset=SMALL)


def _contents(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same(a, b):
    ca, cb = _contents(a), _contents(b)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        if ca[k].dtype == object:  # variable-length strings (the lens records)
            assert ca[k].tolist() == cb[k].tolist(), k
        else:
            assert ca[k].dtype == cb[k].dtype and ca[k].tobytes() == cb[k].tobytes(), k


def test_same_bytes_whatever_the_number_of_workers(tmp_path):
    build_dataset(tmp_path / "w1.h5", 10, 7, CFG, workers=1, part_size=3, store_operators=True)
    build_dataset(tmp_path / "w2.h5", 10, 7, CFG, workers=2, part_size=2, store_operators=True)
    _assert_same(tmp_path / "w1.h5", tmp_path / "w2.h5")
    assert not (tmp_path / "w1.h5.parts").exists()


def test_dataset_contents_and_reader(tmp_path):
    path = build_dataset(tmp_path / "d.h5", 8, 3, CFG, store_operators=True, part_size=3)
    with LensDataset(path) as ds:
        assert len(ds) == 8 and ds.image_grid == SMALL.image_grid and ds.source_grid == SMALL.source_grid
        assert ds.has_operators and ds.config["preset"]["name"] == "small"
        for ex in ds:
            op = ex.operator()
            clean = op.apply(ex.source)
            # the stored image is the operator applied to the stored source, plus noise of the stored sigma
            chi2 = np.mean(((ex.image - clean) / ex.sigma) ** 2)
            assert abs(chi2 - 1) < 5 * math.sqrt(2 / clean.size)
            # every lens is magnified at least 3x (image flux / source flux)
            mu = (op.L @ ex.source.ravel()).sum() * SMALL.image_grid.delta**2 / (ex.source.sum() * SMALL.source_grid.delta**2)
            assert mu >= 3.0 - 1e-4 and mu == pytest.approx(ex.magnification, rel=1e-5)
            assert ex.source.max() == pytest.approx(1.0) and ex.source.min() >= 0
            # the stored operator is F L
            np.testing.assert_allclose(ex.stored_matrix.toarray(), op.matrix.toarray(), rtol=1e-6, atol=1e-9)
        assert ds[-1].index == 7
        with pytest.raises(IndexError):
            ds[8]
    with h5py.File(path) as f:
        import lensinv

        assert f.attrs["lensinv_version"] == lensinv.__version__ and "realistic" not in f.attrs["config"]


def test_interrupted_build_resumes_to_the_same_file(tmp_path):
    build_dataset(tmp_path / "ref.h5", 9, 5, CFG, part_size=2)

    class Stop(Exception):
        pass

    seen = []

    def interrupt(k):
        seen.append(k)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        build_dataset(tmp_path / "x.h5", 9, 5, CFG, part_size=2, progress=interrupt)
    assert not (tmp_path / "x.h5").exists()
    parts = sorted((tmp_path / "x.h5.parts").glob("part-*.npz"))
    assert len(parts) == 2
    # debris of a write that was killed half way is ignored
    (tmp_path / "x.h5.parts" / "part-0000000004.npz.tmp999").write_bytes(b"half a file")
    (tmp_path / "x.h5.tmp").write_bytes(b"half a merge")
    counted = []
    build_dataset(tmp_path / "x.h5", 9, 5, CFG, part_size=2, progress=counted.append)
    assert sum(counted) == 9 and counted[0] == 4  # the two finished parts were reused
    _assert_same(tmp_path / "ref.h5", tmp_path / "x.h5")
    # running again leaves the finished file alone
    mtime = os.path.getmtime(tmp_path / "x.h5")
    build_dataset(tmp_path / "x.h5", 9, 5, CFG, part_size=2)
    assert os.path.getmtime(tmp_path / "x.h5") == mtime


def test_sigkill_and_rerun_of_the_script(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "build_operators.py"), "--n", "200", "--seed", "2",
           "--preset", "magnet", "--part-size", "2"]
    out = tmp_path / "k.h5"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "k.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the build finished before it could be killed"
    assert len(list(parts.glob("part-*.npz"))) >= 3
    assert subprocess.run([*cmd, "--out", str(out)], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "--out", str(tmp_path / "ref.h5"), "--workers", "2"],
                          capture_output=True).returncode == 0
    _assert_same(out, tmp_path / "ref.h5")


def test_other_config_is_refused(tmp_path):
    path = build_dataset(tmp_path / "a.h5", 4, 1, CFG)
    before = _contents(path)
    with pytest.raises(ValueError, match="different configuration"):
        build_dataset(path, 4, 2, CFG)  # another seed
    with pytest.raises(ValueError, match="different configuration"):
        build_dataset(path, 4, 1, SimulationConfig(preset=ObservationPreset(name="other", image_grid=ImageGrid(48, 0.12),
                                                                            source_grid=SourceGrid(24, 1.5), supersample=2)))
    after = _contents(path)
    assert sorted(after) == sorted(before)
    assert all(np.array_equal(before[k], v) if v.dtype == object else before[k].tobytes() == v.tobytes()
               for k, v in after.items())
    # an unfinished build is not mixed with another configuration either
    with pytest.raises(ZeroDivisionError):
        build_dataset(tmp_path / "b.h5", 6, 1, CFG, part_size=2, progress=lambda k: 1 / 0)
    with pytest.raises(ValueError, match="unfinished build"):
        build_dataset(tmp_path / "b.h5", 6, 9, CFG, part_size=2)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_operators.py"), "--n", "4", "--seed", "1",
                        "--out", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "different configuration" in r.stderr


def test_shards_concatenate_to_the_whole(tmp_path):
    whole = build_dataset(tmp_path / "whole.h5", 7, 4, CFG, part_size=2)
    shards = [build_dataset(tmp_path / f"s{i}.h5", 7, 4, CFG, shard=(i, 3), part_size=2) for i in range(3)]
    assert [shard_range(7, (i, 3)) for i in range(3)] == [(0, 2), (2, 4), (4, 7)]
    a, b = LensDataset(whole), LensDataset(shards)
    assert len(b) == 7
    for i in range(7):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        assert b[i].index == i
    with pytest.raises(ValueError, match="shard"):
        build_dataset(tmp_path / "bad.h5", 7, 4, CFG, shard=(3, 3))


def test_reader_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LensDataset(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    with pytest.raises(ValueError, match="cannot be read"):
        LensDataset(tmp_path / "junk.h5")
    path = build_dataset(tmp_path / "ok.h5", 3, 1, CFG)
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read|truncated|incomplete"):
        LensDataset(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a lensinv data set"):
        LensDataset(tmp_path / "other.h5")
    other = build_dataset(tmp_path / "big.h5", 3, 1, SimulationConfig(
        preset=ObservationPreset(name="small", image_grid=ImageGrid(40, 0.12), source_grid=SourceGrid(24, 1.5),
                                 supersample=2)))
    with pytest.raises(ValueError, match="incompatible"):
        LensDataset([path, other])
