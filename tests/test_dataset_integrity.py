"""Data sets under hostile conditions: concurrent builds, corrupted files and parts, resumes with
another part size, empty shards, odd paths and indices."""

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lensinv.dataset import BuildLockedError, LensDataset, _build_lock, build_dataset
from .test_dataset import CFG, _assert_same

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "scripts" / "build_operators.py")]


def _env():
    # the scripts import this checkout's lensinv, whatever is installed
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(name) and p.name != name)


def _interrupted(path: Path, n: int, seed: int, part_size: int, after: int) -> None:
    """Start a build and stop it (by an exception) after ``after`` parts."""

    class Stop(Exception):
        pass

    seen = []

    def stop(k):
        seen.append(k)
        if len(seen) == after:
            raise Stop

    with pytest.raises(Stop):
        build_dataset(path, n, seed, CFG, part_size=part_size, progress=stop)


# --------------------------------------------------------------------------- concurrent builds


def test_a_second_build_of_the_same_file_fails_at_once(tmp_path):
    out = tmp_path / "d.h5"
    with _build_lock(out):
        t0 = time.perf_counter()
        with pytest.raises(BuildLockedError, match=f"{out}.*another process") as err:
            build_dataset(out, 4, 1, CFG)
        assert isinstance(err.value, ValueError) and time.perf_counter() - t0 < 5
        assert not out.exists() and not (tmp_path / "d.h5.parts").exists()
    # released: the build now runs, and leaves neither a lock file nor parts behind
    build_dataset(out, 4, 1, CFG)
    assert _leftovers(tmp_path, "d.h5") == []
    # a build that fails half way releases the lock too
    with pytest.raises(ZeroDivisionError):
        build_dataset(tmp_path / "e.h5", 4, 1, CFG, part_size=2, progress=lambda k: 1 / 0)
    with _build_lock(tmp_path / "e.h5"):
        pass


def test_concurrent_script_runs_and_a_killed_holder(tmp_path):
    out = tmp_path / "k.h5"
    cmd = [*SCRIPT, "--n", "400", "--seed", "2", "--preset", "magnet", "--part-size", "2", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "k.h5.parts").glob("part-*.npz")) \
                and first.poll() is None:
            time.sleep(0.01)
        assert first.poll() is None, "the first build ended too early"
        second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
        assert first.poll() is None, "the first build ended before the second one tried"
        assert second.returncode == 2, second.stderr
        assert str(out) in second.stderr and "another process" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not out.exists()
    # the kernel released the killed build's lock: a new build may take it
    with _build_lock(out):
        pass


# --------------------------------------------------------------------------- corrupted files


def test_corrupted_middle_of_a_file_is_a_clear_error(tmp_path):
    path = build_dataset(tmp_path / "d.h5", 6, 3, CFG, store_operators=True, part_size=3)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.h5.*corrupt|lens \d+ of the data set \(entry \d+ of .*bad\.h5\)"):
        with LensDataset(bad) as ds:
            for ex in ds:
                pass


def test_a_corrupted_chunk_names_the_lens(tmp_path):
    path = build_dataset(tmp_path / "d.h5", 4, 3, CFG, part_size=2)
    with h5py.File(path, "r") as f:
        chunk = f["image"].id.get_chunk_info_by_coord((1, 0, 0))
    data = bytearray(path.read_bytes())
    at = chunk.byte_offset + chunk.size // 2
    data[at:at + 16] = bytes(16)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with LensDataset([path, bad]) as ds:  # opening reads images 0, 2 and 3 of each file: not this one
        assert ds[1].index == 1 and ds[6].index == 2
        with pytest.raises(ValueError, match=r"lens -3 of the data set \(entry 1 of .*bad\.h5\) cannot be read: "
                                             r"the file is corrupt"):
            ds[-3]


def test_corrupted_small_arrays_fail_at_open(tmp_path):
    path = build_dataset(tmp_path / "d.h5", 5, 3, CFG, part_size=2)
    with h5py.File(path, "r") as f:
        assert f["image"].fletcher32 and f["source"].fletcher32 and f["psf"].fletcher32
        fields = set(f["crc32"].attrs["fields"].replace('"', "").strip("[]").split(", "))
        assert {"sigma", "index", "lens/records"} <= fields
    broken = tmp_path / "broken.h5"
    shutil.copy(path, broken)
    with h5py.File(broken, "r+") as f:  # a changed value without its checksum (not a filter error)
        f["sigma"][2] = f["sigma"][2] * 1.5
    with pytest.raises(ValueError, match=r"broken\.h5 is corrupt: 1 lens\(es\).*lens 2 of the data set"):
        LensDataset(broken)
    # as the second shard, the lens is numbered in the whole data set
    with pytest.raises(ValueError, match=r"lens 7 of the data set \(entry 2 of this file\)"):
        LensDataset([path, broken])
    # the lens records (variable-length strings) are covered too
    shutil.copy(path, broken)
    with h5py.File(broken, "r+") as f:
        f["lens/records"][1] = f["lens/records"][1].decode().replace('"q": 0.', '"q": 0.1')
    with pytest.raises(ValueError, match=r"broken\.h5 is corrupt: 1 lens\(es\).*lens 1 of the data set"):
        LensDataset(broken)


def test_files_without_checksums_read_as_before(tmp_path):
    """Files of earlier versions (no Fletcher-32, no /crc32) stay readable."""
    path = build_dataset(tmp_path / "d.h5", 4, 3, CFG, store_operators=True, part_size=2)
    old = tmp_path / "old.h5"
    with h5py.File(path, "r") as src, h5py.File(old, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset) and name != "crc32":
                d = dst.create_dataset(name, data=obj[()])
                for k, v in obj.attrs.items():
                    d.attrs[k] = v

        src.visititems(copy)
    with h5py.File(old, "r") as f:
        assert "crc32" not in f and not f["image"].fletcher32
    a, b = LensDataset(path), LensDataset(old)
    assert len(b) == 4
    for i in range(4):
        assert a[i].index == b[i].index and a[i].sigma == b[i].sigma
        np.testing.assert_array_equal(a[i].image, b[i].image)
        assert (a[i].stored_matrix != b[i].stored_matrix).nnz == 0


def test_a_corrupted_part_is_rebuilt_at_merge(tmp_path, caplog):
    ref = build_dataset(tmp_path / "ref.h5", 6, 5, CFG, part_size=2)
    out = tmp_path / "x.h5"
    _interrupted(out, 6, 5, 2, after=2)
    part = tmp_path / "x.h5.parts" / "part-0000000002.npz"
    with np.load(part) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["image"] = arrays["image"].copy()
    arrays["image"][0, 3, 3] += 1.0  # a valid file whose contents no longer match its checksums
    np.savez(part, **arrays)
    with caplog.at_level(logging.WARNING, logger="lensinv.dataset"):
        build_dataset(out, 6, 5, CFG, part_size=2)
    assert "checksum mismatch in image" in caplog.text and "rebuilding" in caplog.text
    _assert_same(ref, out)
    # an unreadable part (half written by an older version, say) is rebuilt too
    out2 = tmp_path / "y.h5"
    _interrupted(out2, 6, 5, 2, after=2)
    (tmp_path / "y.h5.parts" / "part-0000000000.npz").write_bytes(b"PK\x03\x04 not a zip")
    build_dataset(out2, 6, 5, CFG, part_size=2)
    _assert_same(ref, out2)
    assert _leftovers(tmp_path, "y.h5") == []


# --------------------------------------------------------------------------- part sizes and shards


def test_resume_with_another_part_size(tmp_path, caplog):
    ref = build_dataset(tmp_path / "ref.h5", 9, 5, CFG, part_size=4)
    out = tmp_path / "x.h5"
    _interrupted(out, 9, 5, part_size=2, after=2)  # parts [0, 2) and [2, 4)
    with caplog.at_level(logging.WARNING, logger="lensinv.dataset"):
        counted = []
        build_dataset(out, 9, 5, CFG, part_size=3, progress=counted.append)
    assert "reusing 2 finished part(s) of 2 lens(es)" in caplog.text
    assert counted[0] == 4 and sum(counted) == 9
    _assert_same(ref, out)
    assert _leftovers(tmp_path, "x.h5") == []
    # parts of two sizes that overlap (the state an older version wedged itself in) still finish
    out = tmp_path / "y.h5"
    _interrupted(out, 9, 5, part_size=3, after=2)  # [0, 3) and [3, 6)
    _interrupted(tmp_path / "z.h5", 9, 5, part_size=2, after=2)  # [0, 2) and [2, 4)
    shutil.copy(tmp_path / "z.h5.parts" / "part-0000000002.npz", tmp_path / "y.h5.parts")
    build_dataset(out, 9, 5, CFG, part_size=2)
    _assert_same(ref, out)
    build_dataset(tmp_path / "z.h5", 9, 5, CFG, part_size=4)
    _assert_same(ref, tmp_path / "z.h5")


def _script_main():
    spec = importlib.util.spec_from_file_location("build_operators_script", SCRIPT[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_part_size_must_be_positive(tmp_path, capsys):
    main = _script_main()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="part_size"):
            build_dataset(tmp_path / "d.h5", 4, 1, CFG, part_size=bad)
        with pytest.raises(SystemExit) as exit_:
            main(["--n", "4", "--seed", "1", "--out", str(tmp_path / "d.h5"), "--part-size", str(bad)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "argument --part-size: must be an integer >= 1" in err
    assert list(tmp_path.iterdir()) == []


def test_empty_shard_is_a_valid_empty_file(tmp_path):
    shards = [build_dataset(tmp_path / f"s{i}.h5", 2, 4, CFG, shard=(i, 8), store_operators=True)
              for i in range(8)]
    whole = build_dataset(tmp_path / "whole.h5", 2, 4, CFG, store_operators=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["whole.h5", *(f"s{i}.h5" for i in range(8))])
    with LensDataset(shards[0]) as empty:
        assert len(empty) == 0 and list(empty) == []
        with pytest.raises(IndexError):
            empty[0]
    a, b = LensDataset(whole), LensDataset(shards)
    assert len(b) == 2
    for i in range(2):
        assert b[i].index == i
        np.testing.assert_array_equal(a[i].image, b[i].image)
        assert (a[i].stored_matrix != b[i].stored_matrix).nnz == 0
    # the script: exit 0, says so, leaves nothing else behind
    out = tmp_path / "script" / "e.h5"
    r = subprocess.run([*SCRIPT, "--n", "2", "--seed", "4", "--out", str(out), "--shard", "0/8", "--preset", "magnet"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "no lenses" in r.stdout and os.listdir(out.parent) == ["e.h5"]
    assert len(LensDataset(out)) == 0


# --------------------------------------------------------------------------- paths and indices


def test_directory_paths_are_named_as_such(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        LensDataset(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        build_dataset(tmp_path, 4, 1, CFG)


def test_negative_indices_work_like_python(tmp_path):
    path = build_dataset(tmp_path / "d.h5", 4, 1, CFG)
    with LensDataset(path) as ds:
        assert [ds[i].index for i in range(-4, 0)] == [0, 1, 2, 3]
        assert ds[np.int64(-2)].index == 2
        for bad in (-5, 4, -100):
            with pytest.raises(IndexError, match=rf"index {bad} out of range for a data set of 4 lenses"):
                ds[bad]
