"""Simulated lens data sets on disk (HDF5): a resumable, deterministic builder and a reader.

Layout of a file (all per-lens arrays have the lens axis first)::

    /index             (n,)            global lens index (seed stream)
    /source            (n, ns, ns)     float32, peak 1
    /image             (n, ni, ni)     float32, F L s + noise
    /sigma /snr /psf_fwhm /magnification   (n,) float64;  /tries (n,) int32
    /lens/records      (n,) UTF-8 JSON strings: the lens as [[profile name, {parameter: value}], ...]
                       (any registered mass profile; format 1 files stored SIE + shear as
                       /lens/{theta_E, q, phi, center_x, center_y, gamma, gamma_phi} and still read)
    /psf               (n, K, K)       float64   [presets with a PSF]
    /operators/{indptr (n, ni^2+1) int64, offset (n+1,) int64, indices int32, data float32}
                                       F L in CSR, concatenated   [--store-operators]
    /crc32             (n,) uint32     per lens, CRC-32 of its rows of the per-lens datasets that
                                       have no Fletcher-32 filter (names in its attribute "fields")

Interferometric presets (``alma``) write format 3 (which readers of formats 1-2 refuse rather than
misread), with the same per-lens arrays except ``/psf``, plus::

    /vis               (n, n_vis)      complex64 visibilities (per lens; raw, Fletcher-32)
    /uv/uv             (n_vis, 2)      float64 baselines (wavelengths), once per file
    /uv/primary_beam   (ni, ni)        float64 primary beam, once per file   [presets with one]

and ``/image`` holds the natural-weighted dirty image of ``/vis`` and ``/sigma`` the noise per real
and imaginary part of each visibility (``lensinv.VisibilityOperator.dirty``).

The bulk arrays (source, image, psf, operators) carry HDF5's Fletcher-32 checksum
per chunk and the small per-lens arrays are covered by ``/crc32``, so
:class:`LensDataset` reports a corrupted file as a ``ValueError`` naming the file
and the lens. Files written before the checksums existed are read as before.

Attributes record the format version, the package version, the full
configuration (JSON), the seed, the shard and the grids.

Building writes parts of a few lenses each, atomically (temporary file, then
rename), into ``FILE.parts/``; a run that is killed at any moment continues
from the parts that exist (whatever part size they were built with). Each part
records a CRC-32 of each of its arrays, checked when the parts are merged into
a temporary file that is renamed to ``FILE``; a part that fails the check is
rebuilt. Each lens has its own random stream (seed, index), so the result does
not depend on the number of workers or the part size. A build holds an
exclusive lock (``flock`` on ``FILE.lock``) from start to end, so a second
build of the same file fails at once instead of corrupting it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp

from .validate import int_at_least
from .io import atomic_path, atomic_write, write_text_atomic
from .grids import ImageGrid, SourceGrid
from .mass import SIE, ExternalShear, Lens
from .observation import Observation
from .simulate import SimulationConfig, simulate
from .visibility import UVCoverage

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
VISIBILITY_FORMAT = 3  # the format of interferometric data sets (FORMAT_VERSION and /vis, /uv)
_READABLE_FORMATS = (1, 2, 3)
_LEGACY_LENS_FIELDS = ("theta_E", "q", "phi", "center_x", "center_y", "gamma", "gamma_phi")  # format 1
_SCALARS = {"sigma": np.float64, "snr": np.float64, "psf_fwhm": np.float64, "magnification": np.float64,
            "tries": np.int32, "index": np.int64}
PathLike = Union[str, os.PathLike]


def _version() -> str:
    from . import __version__

    return __version__


def shard_range(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Indices ``[lo, hi)`` of shard ``i`` of ``k`` of a data set of ``n`` lenses."""
    i, k = shard
    if not (isinstance(i, int) and isinstance(k, int) and k >= 1 and 0 <= i < k):
        raise ValueError(f"shard must be (i, k) with 0 <= i < k, got {shard!r}")
    return n * i // k, n * (i + 1) // k


def _lens_json(lens: Lens) -> str:
    """The lens as stored: JSON of ``[[profile name, {parameter: value}], ...]``."""
    return json.dumps(lens.to_records(), sort_keys=True)


def _lens_from_json(text: Union[str, bytes]) -> Lens:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return Lens.from_records(json.loads(text))


def _legacy_lens(f, j: int) -> Lens:
    """A format-1 file's SIE + external shear."""
    lp = {name: float(f[f"lens/{name}"][j]) for name in _LEGACY_LENS_FIELDS}
    return Lens(SIE(lp["theta_E"], lp["q"], lp["phi"], (lp["center_x"], lp["center_y"])),
                ExternalShear(lp["gamma"], lp["gamma_phi"]))


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(array))


def _row_crc32(arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Per-row CRC-32 (uint32, shape ``(n,)``) of the bytes of row ``i`` of every array, in order.

    Every array has ``n`` rows along its first axis: fixed-size dtypes, or 1-D object arrays of
    ``bytes``/``str`` (variable-length strings such as the lens records), which are chained after them.
    """
    fixed = [a for a in arrays if a.dtype != object]
    strings = [a for a in arrays if a.dtype == object]
    if n == 0 or not fixed:
        out = np.zeros(n, np.uint32)
    else:
        rows = np.concatenate([np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in fixed], axis=1)
        out = np.fromiter((zlib.crc32(r) for r in rows), np.uint32, n)
    for a in strings:
        out = np.fromiter((zlib.crc32(v if isinstance(v, bytes) else str(v).encode("utf-8"), int(c))
                           for v, c in zip(a, out)), np.uint32, n)
    return out


class BuildLockedError(ValueError):
    """Another process is building the same data-set file."""


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock for building ``path``: ``flock`` on ``FILE.lock`` beside it.

    Non-blocking: raises :class:`BuildLockedError` (a ``ValueError``) at once if another
    process holds it. The kernel drops the lock when the process exits, however it ends;
    the lock file is removed on a normal exit (while still held, so nobody locks a stale one).
    """
    lock = path.with_name(path.name + ".lock")
    fd = _acquire_lock(path, lock)
    if fd is None:
        yield lock
        return
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _acquire_lock(path: Path, lock: Path) -> Optional[int]:
    """Open and ``flock`` ``lock`` (non-blocking); the descriptor, or None where locking is impossible."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        log.warning("no fcntl on this platform: %s is built without a lock", path)
        return None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BuildLockedError(f"{path} is being built by another process (it holds the lock {lock}); "
                                   "wait for that build to finish, or choose another output") from None
        except OSError as exc:  # a file system without flock (some network mounts): build as before
            os.close(fd)
            log.warning("cannot lock %s (%s): building %s without a lock", lock, exc, path)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder we raced with may have removed the file: only a lock on the file on disk counts
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


# --------------------------------------------------------------------------- parts

_WORKER: dict = {}


def _init_worker(seed: int, config: SimulationConfig, store_operators: bool, parts_dir: str, threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _WORKER.update(seed=seed, config=config, store_operators=store_operators, parts_dir=Path(parts_dir))


def _part_path(parts_dir: Path, start: int) -> Path:
    return parts_dir / f"part-{start:010d}.npz"


_PART_CRC = "crc32"  # JSON {array name: CRC-32 of its bytes} inside each part


class _BadPart(Exception):
    """A part file that cannot be used (unreadable, inconsistent or failing its checksums)."""

    def __init__(self, path: Path, start: int, reason: str) -> None:
        super().__init__(f"part {path} is unusable: {reason}")
        self.path, self.start = path, start


@contextlib.contextmanager
def _open_part(parts_dir: Path, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    """Load part ``[start, stop)`` and check it (index, checksums); raises :class:`_BadPart`.

    Parts written before checksums existed (no ``crc32`` entry) are only checked for their index.
    """
    path = _part_path(parts_dir, start)
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip/npy errors of a damaged file come in many types
        raise _BadPart(path, start, f"cannot be read ({type(exc).__name__}: {exc})") from None
    index = arrays.get("index")
    if index is None or not np.array_equal(index, np.arange(start, stop)):
        raise _BadPart(path, start, f"it does not hold lenses {start}..{stop - 1}")
    if _PART_CRC in arrays:
        want = json.loads(str(arrays.pop(_PART_CRC)))
        if sorted(want) != sorted(arrays):
            raise _BadPart(path, start, f"arrays {sorted(arrays)} do not match its checksums {sorted(want)}")
        bad = [k for k, v in arrays.items() if _crc32(v) != want[k]]
        if bad:
            raise _BadPart(path, start, f"checksum mismatch in {', '.join(bad)}")
    yield arrays


def _part_stop(path: Path, start: int) -> Optional[int]:
    """One past the last lens of the existing part ``path`` that starts at lens ``start`` (from its index).

    None if it cannot be read or does not start at ``start``.
    """
    try:
        with np.load(path) as npz:
            index = npz["index"]
    except Exception:
        return None
    if index.ndim != 1 or index.size == 0 or index[0] != start:
        return None
    return int(index[-1]) + 1


def _plan_parts(parts_dir: Path, lo: int, hi: int, part_size: int) -> tuple[list[tuple[int, int]], set[int]]:
    """Cover ``[lo, hi)`` with the finished parts found in ``parts_dir`` and new ones of ``part_size``.

    Returns the spans in order and the starts of those that are finished. Finished parts of any
    size are reused where they tile the range; parts that overlap them are ignored (and rebuilt
    over if they start a new span).
    """
    found: dict[int, int] = {}
    for f in parts_dir.glob("part-*.npz"):
        try:
            start = int(f.name[5:-4])
        except ValueError:
            continue
        if lo <= start < hi:
            stop = _part_stop(f, start)
            if stop is not None and start < stop <= hi:
                found[start] = stop
    starts = sorted(found)
    spans: list[tuple[int, int]] = []
    done: set[int] = set()
    p = lo
    while p < hi:
        if p in found:
            spans.append((p, found[p]))
            done.add(p)
            p = found[p]
            continue
        nxt = next((s for s in starts if s > p), hi)
        stop = min(p + part_size, nxt, hi)
        spans.append((p, stop))
        p = stop
    return spans, done


def _build_part(span: tuple[int, int]) -> int:
    start, stop = span
    seed, config, store = _WORKER["seed"], _WORKER["config"], _WORKER["store_operators"]
    sims = [simulate(i, seed, config) for i in range(start, stop)]
    arrays: dict[str, np.ndarray] = {
        "source": np.stack([s.source for s in sims]).astype(np.float32),
        "image": np.stack([s.image for s in sims]).astype(np.float32),
    }
    for name, dtype in _SCALARS.items():
        arrays[name] = np.array([getattr(s, name) for s in sims], dtype=dtype)
    arrays["lens_records"] = np.array([_lens_json(s.lens) for s in sims])  # unicode, no pickling
    if sims[0].psf is not None:
        arrays["psf"] = np.stack([s.psf for s in sims])
    if sims[0].visibilities is not None:
        arrays["vis"] = np.stack([s.visibilities for s in sims]).astype(np.complex64)
    if store:
        mats = [s.op.matrix for s in sims]
        arrays["op_indptr"] = np.stack([m.indptr.astype(np.int64) for m in mats])
        arrays["op_indices"] = np.concatenate([m.indices.astype(np.int32) for m in mats])
        arrays["op_data"] = np.concatenate([m.data.astype(np.float32) for m in mats])
    arrays[_PART_CRC] = np.array(json.dumps({k: _crc32(v) for k, v in arrays.items()}, sort_keys=True))
    _atomic_savez(_part_path(_WORKER["parts_dir"], start), arrays)
    return stop - start


# --------------------------------------------------------------------------- build


def _header(n: int, seed: int, config: SimulationConfig, store_operators: bool, shard: tuple[int, int]) -> dict:
    pre = config.preset
    fmt = FORMAT_VERSION if pre.interferometer is None else VISIBILITY_FORMAT
    return {"format": fmt, "n": n, "seed": seed, "shard": list(shard), "store_operators": store_operators,
            "config": json.loads(config.to_json()), "image_grid": [pre.image_grid.n, pre.image_grid.pixel_scale],
            "source_grid": [pre.source_grid.n, pre.source_grid.fov], "supersample": pre.supersample}


def _read_header(path: Path) -> Optional[dict]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("header")
    except OSError as exc:
        raise ValueError(f"{path} exists but is not a readable HDF5 file ({exc}); refusing to overwrite it") from None
    return None if text is None else json.loads(text)


def build_dataset(path: PathLike, n: int, seed: int, config: SimulationConfig = SimulationConfig(), *,
                  workers: int = 1, store_operators: bool = False, shard: tuple[int, int] = (0, 1),
                  part_size: Optional[int] = None, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Build (or finish building) a data set of simulated lenses.

    Parameters
    ----------
    path : str or PathLike
        Output HDF5 file. A complete file with the same configuration is left
        as it is; a file or unfinished build with another configuration is
        refused with ``ValueError``, never overwritten.
    n : int
        Lenses in the whole data set (all shards).
    seed : int
        Data-set seed; lens ``i`` draws from the stream ``(seed, i)``.
    config : SimulationConfig
        Preset, lens prior and source model.
    workers : int
        Processes (1 builds in this process).
    store_operators : bool
        Also store each lens's ``F L`` in CSR form.
    shard : tuple of int
        ``(i, k)``: build only the ``i``-th of ``k`` equal slices of the indices.
    part_size : int, optional
        Lenses per new part file (default 32, or 4 with operators). Finished parts of an
        interrupted run are reused whatever size they were built with (with a warning if
        it differs from an explicit ``part_size``).
    progress : callable, optional
        Called with the number of lenses finished, as parts complete
        (including parts found from an earlier run).

    Returns
    -------
    Path
        The finished file.

    Raises
    ------
    ValueError
        Invalid arguments; ``path`` is a directory, or exists (or has an unfinished build)
        with another configuration; another process is building ``path`` (a
        :class:`BuildLockedError`, raised at once); a part fails its checksum again after
        being rebuilt.
    """
    path = Path(path)
    n = int_at_least("n", n, 1)
    workers = int_at_least("workers", workers, 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    lo, hi = shard_range(n, shard)
    if store_operators and config.preset.interferometer is not None:
        raise ValueError(f"store_operators: preset {config.preset.name!r} observes visibilities, which have no "
                         "sparse F L to store (the lensing matrix is rebuilt from the stored lens)")
    explicit_size = part_size is not None
    part_size = int_at_least("part_size", (4 if store_operators else 32) if part_size is None else part_size, 1)
    header = _header(n, int(seed), config, store_operators, shard)
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name (e.g. {path / 'data.h5'})")
    if lo == hi:
        log.warning("%s: shard %d/%d of %d lenses is empty; writing a data set with no lenses", path, *shard, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        return _build_locked(path, header, lo, hi, int(seed), config, workers, store_operators, part_size,
                             explicit_size, progress)


def _build_locked(path: Path, header: dict, lo: int, hi: int, seed: int, config: SimulationConfig, workers: int,
                  store_operators: bool, part_size: int, explicit_size: bool,
                  progress: Optional[Callable[[int], None]]) -> Path:
    """:func:`build_dataset` once its arguments are checked and it holds the build lock."""
    if path.exists():
        existing = _read_header(path)
        if existing == header:
            log.info("%s is complete", path)
            if progress:
                progress(hi - lo)
            return path
        raise ValueError(f"{path} exists and was made with a different configuration; refusing to overwrite it "
                         "(remove it or choose another output)")
    parts_dir = path.with_name(path.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    header_file = parts_dir / "header.json"
    header_text = json.dumps(header, sort_keys=True)
    if header_file.exists():
        if json.loads(header_file.read_text()) != header:
            raise ValueError(f"{parts_dir} holds an unfinished build with a different configuration; "
                             "refusing to mix them (remove it or use the original settings)")
    else:
        write_text_atomic(header_file, header_text)
    spans, finished = _plan_parts(parts_dir, lo, hi, part_size)
    todo = [sp_ for sp_ in spans if sp_[0] not in finished]
    odd = sorted({b - a for a, b in spans if a in finished and b != hi} - {part_size})
    if odd:
        log.log(logging.WARNING if explicit_size else logging.INFO,
                "%s: reusing %d finished part(s) of %s lens(es) from an earlier run; new parts have %d",
                parts_dir, len(finished), "/".join(map(str, odd)), part_size)
    if progress and len(todo) < len(spans):
        progress(sum(b - a for a, b in spans) - sum(b - a for a, b in todo))
    log.info("%s: %d of %d parts to build with %d worker(s)", path, len(todo), len(spans), workers)
    init_args = (int(seed), config, store_operators, str(parts_dir))
    rebuilt: set[int] = set()
    while True:
        _build_parts(todo, workers, init_args, progress)
        try:
            _merge(path, parts_dir, spans, header, config)
            break
        except _BadPart as bad:
            if bad.start in rebuilt:
                raise ValueError(f"{bad}, even after rebuilding it; check the disk holding {parts_dir}") from None
            log.warning("%s; rebuilding it", bad)
            bad.path.unlink(missing_ok=True)
            rebuilt.add(bad.start)
            todo = [sp_ for sp_ in spans if sp_[0] == bad.start]
    shutil.rmtree(parts_dir)
    return path


def _build_parts(todo: list[tuple[int, int]], workers: int, init_args: tuple,
                 progress: Optional[Callable[[int], None]]) -> None:
    """Build the parts ``todo`` (spans of lens indices) in this process or a pool of ``workers``."""
    if workers == 1 or len(todo) <= 1:
        import numba

        _init_worker(*init_args, threads=numba.get_num_threads())
        for span in todo:
            done = _build_part(span)
            if progress:
                progress(done)
    else:
        ctx = mp.get_context("spawn")  # no fork of a process that may run Numba/torch threads
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(*init_args, 1)) as pool:
            for done in pool.imap_unordered(_build_part, todo):
                if progress:
                    progress(done)


def _merge(path: Path, parts_dir: Path, spans: list[tuple[int, int]], header: dict, config: SimulationConfig) -> None:
    import h5py

    pre = config.preset
    m = sum(b - a for a, b in spans)
    ni, ns = pre.image_grid.n, pre.source_grid.n
    with atomic_path(path) as tmp:
        # Fletcher-32 on every chunked array: h5py then raises on reading a corrupted chunk
        gz = dict(compression="gzip", compression_opts=1, shuffle=True, fletcher32=True)

        def per_lens(name: str, tail: tuple[int, ...], dtype: type):
            if m == 0:  # an empty shard: chunks may not exceed the (empty) shape
                return f.create_dataset(name, (0, *tail), dtype)
            return f.create_dataset(name, (m, *tail), dtype, chunks=(1, *tail), **gz)

        with h5py.File(tmp, "w") as f:
            f.attrs["header"] = json.dumps(header, sort_keys=True)
            f.attrs["lensinv_format"] = header["format"]
            f.attrs["lensinv_version"] = _version()
            f.attrs["config"] = config.to_json()
            f.attrs["preset"] = pre.name
            d_src = per_lens("source", (ns, ns), np.float32)
            d_img = per_lens("image", (ni, ni), np.float32)
            d_sc = {k: f.create_dataset(k, (m,), dt) for k, dt in _SCALARS.items()}
            d_lens = f.create_dataset("lens/records", (m,), h5py.string_dtype())
            d_psf = None
            if pre.psf_fwhm is not None:
                K = pre.psf_size
                d_psf = per_lens("psf", (K, K), np.float64)
            d_vis = None
            if pre.interferometer is not None:
                sim = pre.interferometer.simulated()
                f.create_dataset("uv/uv", data=sim.uv, chunks=True, fletcher32=True)
                pb = pre.interferometer.primary_beam_map(pre.image_grid)
                if pb is not None:
                    f.create_dataset("uv/primary_beam", data=pb, chunks=True, fletcher32=True)
                d_vis = f.create_dataset("vis", (m, sim.n_vis), np.complex64,  # raw: noise hardly compresses
                                         **({"chunks": (1, sim.n_vis), "fletcher32": True} if m else {}))
            if header["store_operators"]:
                d_ptr = per_lens("operators/indptr", (ni * ni + 1,), np.int64)
                d_off = f.create_dataset("operators/offset", (m + 1,), np.int64, chunks=True, fletcher32=True)
                # column indices are stored as differences within each row (first entry absolute), which gzip
                # shrinks well; the float32 values hardly compress and are stored raw
                d_ind = f.create_dataset("operators/indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 18,), **gz)
                d_ind.attrs["encoding"] = "row-delta"
                d_dat = f.create_dataset("operators/data", (0,), np.float32, maxshape=(None,), chunks=(1 << 18,),
                                         fletcher32=True)
                offset = 0
                d_off[0] = 0
            row = 0
            for a, b in spans:
                with _open_part(parts_dir, a, b) as part:
                    k = b - a
                    d_src[row:row + k] = part["source"]
                    d_img[row:row + k] = part["image"]
                    for name, ds in d_sc.items():
                        ds[row:row + k] = part[name]
                    d_lens[row:row + k] = part["lens_records"].tolist()
                    if d_psf is not None:
                        d_psf[row:row + k] = part["psf"]
                    if d_vis is not None:
                        d_vis[row:row + k] = part["vis"]
                    if header["store_operators"]:
                        ptr = part["op_indptr"]
                        d_ptr[row:row + k] = ptr
                        nnz = ptr[:, -1]
                        total = int(nnz.sum())
                        d_ind.resize((offset + total,))
                        d_dat.resize((offset + total,))
                        d_ind[offset:offset + total] = _row_delta(part["op_indices"], ptr)
                        d_dat[offset:offset + total] = part["op_data"]
                        d_off[row + 1:row + k + 1] = offset + np.cumsum(nnz)
                        offset += total
                    row += k
            _write_row_checksums(f, m)


def _unchecked_per_lens(f, n: int) -> list[str]:
    """Names of the datasets with ``n`` rows (one per lens) and a fixed-size dtype but no Fletcher-32."""
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 1
                 and obj.shape[0] == n and not obj.fletcher32 and obj.dtype.kind in "biufcSVO" and name != "crc32"
                 else None)
    return sorted(names)


def _write_row_checksums(f, m: int) -> None:
    """Store ``/crc32``: per lens, the CRC-32 of its rows of the per-lens datasets without Fletcher-32."""
    fields = _unchecked_per_lens(f, m)
    d = f.create_dataset("crc32", data=_row_crc32([f[k][()] for k in fields], m))
    d.attrs["fields"] = json.dumps(fields)


def _row_delta(indices: np.ndarray, indptrs: np.ndarray) -> np.ndarray:
    """Encode concatenated CSR column indices as differences within each row."""
    out = indices.astype(np.int32, copy=True)
    out[1:] -= indices[:-1]
    starts = np.concatenate([p[:-1][np.diff(p) > 0] + base for p, base in
                             zip(indptrs, np.concatenate([[0], np.cumsum(indptrs[:, -1])[:-1]]))])
    out[starts] = indices[starts]
    return out


def _row_undelta(delta: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Decode one CSR matrix's column indices from :func:`_row_delta`."""
    full = np.cumsum(delta, dtype=np.int64)
    counts = np.diff(indptr)
    before = np.concatenate([[0], full])[indptr[:-1]]
    return (full - np.repeat(before, counts)).astype(np.int32)


# --------------------------------------------------------------------------- reader


def _read_uv(f, path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The baselines and the primary beam (or None) of an open interferometric data-set file."""
    if "uv/uv" not in f:
        raise ValueError(f"{path} is incomplete: missing uv/uv (the baselines of its visibilities)")
    uv = f["uv/uv"][()]
    if uv.ndim != 2 or uv.shape[1] != 2 or f["vis"].shape[1:] != (uv.shape[0],):
        raise ValueError(f"{path} is inconsistent: uv/uv {uv.shape} does not match vis {f['vis'].shape}")
    return uv, f["uv/primary_beam"][()] if "uv/primary_beam" in f else None


#: Kept for compatibility: a stored lens is an :class:`lensinv.observation.Observation`.
Example = Observation


def _check_file(f, path: Path, n: int, base: int) -> None:
    """The cheap integrity checks of an open data-set file of ``n`` lenses (the first is lens ``base``).

    Reads every small 1-D array in full (verifying Fletcher-32 where present), checks ``/crc32``
    where present (files of older versions have none), and reads the first, middle and last image
    and source (which also fails on a truncated file). Raises ``ValueError``, or ``OSError`` from h5py.
    """
    import h5py

    if n == 0:
        return
    small: list[str] = []
    f.visititems(lambda name, obj: small.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 1
                 and obj.shape[0] <= n + 1 else None)
    for name in small:
        f[name][()]
    for name in ("image", "source", "vis"):
        for j in sorted({0, n // 2, n - 1}) if name in f else ():
            f[name][j]
    if "crc32" in f:
        fields = json.loads(f["crc32"].attrs["fields"])
        missing = [k for k in fields if k not in f]
        if missing:
            raise ValueError(f"{path} is incomplete: missing {', '.join(missing)}")
        got = _row_crc32([f[k][()] for k in fields], n)
        bad = np.flatnonzero(got != f["crc32"][()])
        if bad.size:
            raise ValueError(f"{path} is corrupt: {bad.size} lens(es) fail their checksum, the first being lens "
                             f"{base + bad[0]} of the data set (entry {bad[0]} of this file)")


_REQUIRED_COMMON = ("index", "source", "image", "sigma", "snr", "psf_fwhm", "magnification", "tries")
_REQUIRED = {1: (*_REQUIRED_COMMON, *(f"lens/{k}" for k in _LEGACY_LENS_FIELDS)),
             2: (*_REQUIRED_COMMON, "lens/records"),
             3: (*_REQUIRED_COMMON, "lens/records", "vis")}


class LensDataset:
    """Read simulated lenses written by :func:`build_dataset` (one file or several shards).

    Parameters
    ----------
    paths : path or sequence of paths
        HDF5 files; shards of one data set are concatenated in the order given.

    Raises
    ------
    ValueError
        A file is missing, a directory, truncated, corrupt (a failed checksum in
        what opening reads: the small per-lens arrays and a few chunks), not a
        lensinv data set, or incompatible with the others (different grids,
        preset or configuration). Reading a lens whose stored data are corrupt
        (``ds[i]``) also raises ``ValueError``, naming the file and the index.
    """

    def __init__(self, paths: Union[PathLike, Sequence[PathLike]]) -> None:
        import h5py

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no data set files given")
        self._files: dict[int, "h5py.File"] = {}
        self._pid = os.getpid()
        lengths, headers, uv_pb = [], [], []
        for p in self.paths:
            if p.is_dir():
                raise ValueError(f"data set path {p} is a directory, not an HDF5 file (pass the files in it)")
            if not p.is_file():
                raise ValueError(f"data set file {p} does not exist")
            try:
                with h5py.File(p, "r") as f:
                    version = f.attrs.get("lensinv_format")
                    if "header" not in f.attrs or version not in _READABLE_FORMATS:
                        raise ValueError(f"{p} is not a lensinv data set (formats {_READABLE_FORMATS})")
                    required = _REQUIRED[int(version)]
                    missing = [k for k in required if k not in f]
                    if missing:
                        raise ValueError(f"{p} is incomplete: missing {', '.join(missing)}")
                    n = f["index"].shape[0]
                    bad = [k for k in required if f[k].shape[0] != n]
                    if bad:
                        raise ValueError(f"{p} is inconsistent: {', '.join(bad)} do not have {n} entries")
                    header = json.loads(f.attrs["header"])
                    _check_file(f, p, n, sum(lengths))
                    if int(version) == VISIBILITY_FORMAT:
                        uv_pb.append(_read_uv(f, p))
            except (OSError, KeyError, RuntimeError) as exc:
                raise ValueError(f"{p} cannot be read as HDF5 (truncated or corrupt?): {exc}") from None
            lengths.append(n)
            headers.append(header)
        ref = {k: v for k, v in headers[0].items() if k != "shard"}
        for p, h in zip(self.paths[1:], headers[1:]):
            if {k: v for k, v in h.items() if k != "shard"} != ref:
                raise ValueError(f"{p} is incompatible with {self.paths[0]} (different configuration)")
        self.header = headers[0]
        self.config = headers[0]["config"]
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.image_grid = ImageGrid(n=self.header["image_grid"][0], pixel_scale=self.header["image_grid"][1])
        self.source_grid = SourceGrid(n=self.header["source_grid"][0], fov=self.header["source_grid"][1])
        self.supersample = int(self.header["supersample"])
        self.has_operators = bool(self.header["store_operators"])
        #: the baselines of an interferometric data set (one UVCoverage, so its lenses share a dirty-beam
        #: cache) and its flat primary beam; None for imaging
        self.coverage, self.primary_beam = None, None
        if uv_pb:
            uv, pb = uv_pb[0]
            for p, (uv_k, pb_k) in zip(self.paths[1:], uv_pb[1:]):
                if not (np.array_equal(uv_k, uv) and (pb is None) == (pb_k is None)
                        and (pb is None or np.array_equal(pb_k, pb))):
                    raise ValueError(f"{p} is incompatible with {self.paths[0]} (different uv coverage or primary beam)")
            self.coverage = UVCoverage(uv)
            if pb is not None:
                self.primary_beam = pb.reshape(-1)
                self.primary_beam.flags.writeable = False

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:  # picklable (e.g. to DataLoader workers): open files are not carried
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _file(self, k: int):
        import h5py

        if self._pid != os.getpid():  # re-open after a fork (DataLoader workers)
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = h5py.File(self.paths[k], "r")
        return self._files[k]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getitem__(self, i: int) -> Observation:
        n = len(self)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(i).__name__}")
        given = int(i)
        i = given + n if given < 0 else given
        if not 0 <= i < n:
            raise IndexError(f"index {given} out of range for a data set of {n} lenses")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = int(i - self._starts[k])
        try:
            return self._example(k, j)
        except (OSError, KeyError, RuntimeError) as exc:  # h5py: a failed checksum or filter, damaged metadata
            raise ValueError(f"lens {given} of the data set (entry {j} of {self.paths[k]}) cannot be read: "
                             f"the file is corrupt ({exc})") from None

    def _example(self, k: int, j: int) -> Observation:
        """Entry ``j`` of file ``k``."""
        f = self._file(k)
        lens = _lens_from_json(f["lens/records"][j]) if "lens/records" in f else _legacy_lens(f, j)
        matrix = None
        if self.has_operators:
            indptr = f["operators/indptr"][j]
            off = int(f["operators/offset"][j])
            nnz = int(indptr[-1])
            indices = _row_undelta(f["operators/indices"][off:off + nnz], indptr)
            matrix = sp.csr_matrix((f["operators/data"][off:off + nnz], indices, indptr),
                                   shape=(self.image_grid.size, self.source_grid.size))
        vis = f["vis"][j].astype(np.complex128) if self.coverage is not None else None
        return Observation(index=int(f["index"][j]), lens=lens, source=f["source"][j].astype(np.float64),
                           image=f["image"][j].astype(np.float64), sigma=float(f["sigma"][j]),
                           psf=f["psf"][j] if "psf" in f else None, psf_fwhm=float(f["psf_fwhm"][j]),
                           snr=float(f["snr"][j]), magnification=float(f["magnification"][j]),
                           image_grid=self.image_grid, source_grid=self.source_grid,
                           supersample=self.supersample, tries=int(f["tries"][j]), stored_matrix=matrix,
                           visibilities=vis, coverage=self.coverage, primary_beam=self.primary_beam)

    def __iter__(self) -> Iterator[Observation]:
        for i in range(len(self)):
            yield self[i]

    def __enter__(self) -> "LensDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
