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

Attributes record the format version, the package version, the full
configuration (JSON), the seed, the shard and the grids.

Building writes parts of a few lenses each, atomically (temporary file, then
rename), into ``FILE.parts/``; a run that is killed at any moment continues
from the parts that exist. When all parts exist they are merged into a
temporary file that is renamed to ``FILE``. Each lens has its own random
stream (seed, index), so the result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp

from ._validate import int_at_least
from .io import atomic_path, atomic_write, write_text_atomic
from .grids import ImageGrid, SourceGrid
from .mass import SIE, ExternalShear, Lens
from .operator import LensOperator, operator
from .simulate import SimulationConfig, simulate

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)
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


# --------------------------------------------------------------------------- parts

_WORKER: dict = {}


def _init_worker(seed: int, config: SimulationConfig, store_operators: bool, parts_dir: str, threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _WORKER.update(seed=seed, config=config, store_operators=store_operators, parts_dir=Path(parts_dir))


def _part_path(parts_dir: Path, start: int) -> Path:
    return parts_dir / f"part-{start:010d}.npz"


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
    if store:
        mats = [s.op.matrix for s in sims]
        arrays["op_indptr"] = np.stack([m.indptr.astype(np.int64) for m in mats])
        arrays["op_indices"] = np.concatenate([m.indices.astype(np.int32) for m in mats])
        arrays["op_data"] = np.concatenate([m.data.astype(np.float32) for m in mats])
    _atomic_savez(_part_path(_WORKER["parts_dir"], start), arrays)
    return stop - start


# --------------------------------------------------------------------------- build


def _header(n: int, seed: int, config: SimulationConfig, store_operators: bool, shard: tuple[int, int]) -> dict:
    pre = config.preset
    return {"format": FORMAT_VERSION, "n": n, "seed": seed, "shard": list(shard), "store_operators": store_operators,
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
        Lenses per part file (default 32, or 4 with operators).
    progress : callable, optional
        Called with the number of lenses finished, as parts complete
        (including parts found from an earlier run).

    Returns
    -------
    Path
        The finished file.
    """
    path = Path(path)
    n = int_at_least("n", n, 1)
    workers = int_at_least("workers", workers, 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    lo, hi = shard_range(n, shard)
    part_size = int_at_least("part_size", part_size or (4 if store_operators else 32), 1)
    header = _header(n, int(seed), config, store_operators, shard)
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
    spans = [(s, min(s + part_size, hi)) for s in range(lo, hi, part_size)]
    todo = [sp_ for sp_ in spans if not _part_path(parts_dir, sp_[0]).exists()]
    if progress and len(todo) < len(spans):
        progress(sum(b - a for a, b in spans) - sum(b - a for a, b in todo))
    log.info("%s: %d of %d parts to build with %d worker(s)", path, len(todo), len(spans), workers)
    init_args = (int(seed), config, store_operators, str(parts_dir))
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
    _merge(path, parts_dir, spans, header, config)
    shutil.rmtree(parts_dir)
    return path


def _merge(path: Path, parts_dir: Path, spans: list[tuple[int, int]], header: dict, config: SimulationConfig) -> None:
    import h5py

    pre = config.preset
    m = sum(b - a for a, b in spans)
    ni, ns = pre.image_grid.n, pre.source_grid.n
    with atomic_path(path) as tmp:
        gz = dict(compression="gzip", compression_opts=1, shuffle=True)
        with h5py.File(tmp, "w") as f:
            f.attrs["header"] = json.dumps(header, sort_keys=True)
            f.attrs["lensinv_format"] = FORMAT_VERSION
            f.attrs["lensinv_version"] = _version()
            f.attrs["config"] = config.to_json()
            f.attrs["preset"] = pre.name
            d_src = f.create_dataset("source", (m, ns, ns), np.float32, chunks=(1, ns, ns), **gz)
            d_img = f.create_dataset("image", (m, ni, ni), np.float32, chunks=(1, ni, ni), **gz)
            d_sc = {k: f.create_dataset(k, (m,), dt) for k, dt in _SCALARS.items()}
            d_lens = f.create_dataset("lens/records", (m,), h5py.string_dtype())
            d_psf = None
            if pre.psf_fwhm is not None:
                K = pre.psf_size
                d_psf = f.create_dataset("psf", (m, K, K), np.float64, chunks=(1, K, K), **gz)
            if header["store_operators"]:
                d_ptr = f.create_dataset("operators/indptr", (m, ni * ni + 1), np.int64, chunks=(1, ni * ni + 1), **gz)
                d_off = f.create_dataset("operators/offset", (m + 1,), np.int64)
                # column indices are stored as differences within each row (first entry absolute), which gzip
                # shrinks well; the float32 values hardly compress and are stored raw
                d_ind = f.create_dataset("operators/indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 18,), **gz)
                d_ind.attrs["encoding"] = "row-delta"
                d_dat = f.create_dataset("operators/data", (0,), np.float32, maxshape=(None,), chunks=(1 << 18,))
                offset = 0
                d_off[0] = 0
            row = 0
            for a, b in spans:
                with np.load(_part_path(parts_dir, a)) as part:
                    k = b - a
                    if part["index"].shape != (k,) or part["index"][0] != a:
                        raise ValueError(f"part {a} in {parts_dir} is inconsistent; remove it to rebuild")
                    d_src[row:row + k] = part["source"]
                    d_img[row:row + k] = part["image"]
                    for name, ds in d_sc.items():
                        ds[row:row + k] = part[name]
                    d_lens[row:row + k] = part["lens_records"].tolist()
                    if d_psf is not None:
                        d_psf[row:row + k] = part["psf"]
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


@dataclass(frozen=True, eq=False)
class Example:
    """One stored lens.

    Attributes
    ----------
    index : int
        Global index (the lens's random stream).
    lens : Lens
    source : ndarray
        ``(n_src, n_src)`` float64, peak 1.
    image : ndarray
        ``(n_img, n_img)`` float64 observed image.
    sigma : float
        Noise standard deviation (0 for noise-free data), image units.
    psf : ndarray or None
    psf_fwhm, snr, magnification : float
    image_grid, source_grid : ImageGrid, SourceGrid
    supersample : int
    stored_matrix : scipy.sparse.csr_matrix or None
        The stored ``F L`` (float32 values) when the file has operators.
    """

    index: int
    lens: Lens
    source: np.ndarray
    image: np.ndarray
    sigma: float
    psf: Optional[np.ndarray]
    psf_fwhm: float
    snr: float
    magnification: float
    image_grid: ImageGrid
    source_grid: SourceGrid
    supersample: int
    stored_matrix: Optional[sp.csr_matrix] = None

    def operator(self) -> LensOperator:
        """The lens's forward operator, rebuilt exactly (float64) from its parameters."""
        return operator(self.lens, self.image_grid, self.source_grid, psf=self.psf, supersample=self.supersample)


_REQUIRED_COMMON = ("index", "source", "image", "sigma", "snr", "psf_fwhm", "magnification", "tries")
_REQUIRED = {1: (*_REQUIRED_COMMON, *(f"lens/{k}" for k in _LEGACY_LENS_FIELDS)),
             2: (*_REQUIRED_COMMON, "lens/records")}


class LensDataset:
    """Read simulated lenses written by :func:`build_dataset` (one file or several shards).

    Parameters
    ----------
    paths : path or sequence of paths
        HDF5 files; shards of one data set are concatenated in the order given.

    Raises
    ------
    ValueError
        A file is missing, truncated, not a lensinv data set, or incompatible
        with the others (different grids, preset or configuration).
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
        lengths, headers = [], []
        for p in self.paths:
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
                    f["image"][n - 1]  # touches the last chunk: fails on a truncated file
            except OSError as exc:
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

    def __getitem__(self, i: int) -> Example:
        n = len(self)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a data set of {n} lenses")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = int(i - self._starts[k])
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
        return Example(index=int(f["index"][j]), lens=lens, source=f["source"][j].astype(np.float64),
                       image=f["image"][j].astype(np.float64), sigma=float(f["sigma"][j]),
                       psf=f["psf"][j] if "psf" in f else None, psf_fwhm=float(f["psf_fwhm"][j]),
                       snr=float(f["snr"][j]), magnification=float(f["magnification"][j]),
                       image_grid=self.image_grid, source_grid=self.source_grid, supersample=self.supersample,
                       stored_matrix=matrix)

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def __enter__(self) -> "LensDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
