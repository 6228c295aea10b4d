"""Interferometric data: visibilities in and out (uvfits, ``.npz``, measurement sets), and a
simulator of ALMA-like uv coverage with thermal noise.

Conventions: ``u, v`` in wavelengths, visibilities in Jy, ``sigma`` the noise standard deviation
per real and per imaginary part (Jy); a uvfits/MS weight ``w`` is read as ``sigma = 1/sqrt(w)``.
Everything written goes through :func:`lensinv.io.atomic_path` / :func:`lensinv.io.atomic_write`.

The antenna layouts of :func:`alma_layout` are *not* ALMA's surveyed pad positions (no public file
of them was at hand offline): they are reproducible layouts with ALMA-like properties (43 12-m
antennas, a dense core and three spiral arms, longest baseline of the named configuration), at
ALMA's site latitude. Uv coverage follows from them by the standard Earth-rotation formulae
(Thompson, Moran & Swenson 2017, eqs. 4.1-4.3).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .validate import int_at_least, positive_float
from .grids import ImageGrid
from .io import atomic_path, atomic_write
from .visibility import ARCSEC, UVCoverage, check_uv

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

C_LIGHT = 299792458.0
"""Speed of light (m/s)."""
K_BOLTZMANN = 1.380649e-23
"""Boltzmann's constant (J/K)."""
JY = 1e-26
"""One jansky in W m^-2 Hz^-1."""
SIDEREAL_DAY = 86164.0905
"""Seconds per sidereal day."""
ALMA_LATITUDE = -23.02917
"""Latitude of the ALMA array centre (degrees; Chajnantor plateau)."""


# ---------------------------------------------------------------------------------------------
# the data record
@dataclass(frozen=True, eq=False)
class Visibilities:
    """Calibrated visibilities of one (Stokes I) observation.

    Parameters
    ----------
    uv : ndarray
        ``(n_vis, 2)`` baselines in wavelengths.
    vis : ndarray
        ``(n_vis,)`` complex visibilities (Jy).
    sigma : ndarray
        ``(n_vis,)`` noise per real and per imaginary part (Jy, finite, > 0).
    frequency : float, optional
        Reference frequency (Hz), used to write uvfits (UU, VV in seconds) and kept for reference.
    """

    uv: np.ndarray
    vis: np.ndarray
    sigma: np.ndarray
    frequency: Optional[float] = None

    def __post_init__(self) -> None:
        uv = check_uv(self.uv)
        n = uv.shape[0]
        vis = np.asarray(self.vis)
        if vis.dtype.kind not in "biufc":
            raise ValueError(f"vis must be an array of numbers, got dtype {vis.dtype}")
        vis = vis.astype(np.complex128).reshape(-1)
        if vis.shape != (n,):
            raise ValueError(f"vis must have {n} elements (one per baseline), got {np.shape(self.vis)}")
        if not np.all(np.isfinite(vis)):
            raise ValueError("vis contains NaN or inf values")
        sig = np.asarray(self.sigma)
        if sig.dtype.kind not in "biuf":
            raise ValueError(f"sigma must be real, got dtype {sig.dtype}")
        sig = np.broadcast_to(sig.astype(np.float64), (n,)).copy() if sig.ndim == 0 else sig.astype(np.float64)
        if sig.shape != (n,):
            raise ValueError(f"sigma must have {n} elements (one per visibility), got {sig.shape}")
        if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise ValueError("sigma must be finite and > 0 (Jy per real and imaginary part)")
        if self.frequency is not None:
            object.__setattr__(self, "frequency", positive_float("frequency", self.frequency))
        for name, arr in (("uv", uv), ("vis", vis), ("sigma", sig)):
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @property
    def n_vis(self) -> int:
        return int(self.uv.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """``1 / sigma^2`` (1/Jy^2)."""
        return 1.0 / self.sigma**2

    @cached_property
    def coverage(self) -> UVCoverage:
        """The baselines as a :class:`lensinv.UVCoverage` (one per record, so its beam cache is shared)."""
        return UVCoverage(self.uv)


# ---------------------------------------------------------------------------------------------
# .npz
def write_npz(path: PathLike, data: Visibilities) -> None:
    """Write ``u, v`` (wavelengths), ``vis`` (Jy, complex), ``sigma`` (Jy) and ``frequency`` (Hz, NaN
    if unknown) to an ``.npz`` file, atomically."""
    with atomic_write(path) as f:
        np.savez(f, u=data.uv[:, 0], v=data.uv[:, 1], vis=data.vis, sigma=data.sigma,
                 frequency=np.float64(np.nan if data.frequency is None else data.frequency))


def read_npz(path: PathLike) -> Visibilities:
    """Read what :func:`write_npz` writes (keys ``u, v, vis, sigma``; ``frequency`` optional)."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("u", "v", "vis", "sigma") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: a visibility .npz needs keys u, v, vis, sigma; missing {', '.join(missing)}")
        freq = float(z["frequency"]) if "frequency" in z.files else math.nan
        return Visibilities(uv=np.stack([z["u"], z["v"]], axis=1), vis=z["vis"], sigma=z["sigma"],
                            frequency=None if not math.isfinite(freq) else freq)


# ---------------------------------------------------------------------------------------------
# uvfits (random groups)
_STOKES = {1: "I", -1: "RR", -2: "LL", -3: "RL", -4: "LR", -5: "XX", -6: "YY", -7: "XY", -8: "YX"}


def write_uvfits(path: PathLike, data: Visibilities, *, antennas: Optional[np.ndarray] = None,
                 ra: float = 0.0, dec: float = 0.0, obj: str = "LENS", telescope: str = "ALMA",
                 overwrite: bool = False) -> None:
    """Write Stokes I visibilities as a uvfits random-groups file (AIPS/CASA layout).

    Parameters
    ----------
    path : str or PathLike
    data : Visibilities
        Needs ``frequency`` (Hz): uvfits stores UU, VV in seconds (``u / frequency``).
    antennas : ndarray, optional
        ``(n_vis, 2)`` 1-based antenna numbers for the BASELINE parameter (``256 a1 + a2``); default
        0.
    ra, dec : float
        Phase centre (degrees).
    obj, telescope : str
    overwrite : bool
        Replace an existing file.

    Notes
    -----
    One IF, one channel, one Stokes (I, CRVAL3 = 1); the (real, imaginary, weight) axis holds the
    visibility (Jy) and ``1/sigma^2``; values are float64 (BITPIX -64) so a round trip is exact.
    """
    from astropy.io import fits

    if data.frequency is None:
        raise ValueError("data.frequency (Hz) is needed to write uvfits (UU, VV are stored in seconds)")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    n = data.n_vis
    arr = np.zeros((n, 1, 1, 1, 1, 1, 3))
    arr[..., 0] = data.vis.real.reshape(n, 1, 1, 1, 1, 1)
    arr[..., 1] = data.vis.imag.reshape(n, 1, 1, 1, 1, 1)
    arr[..., 2] = data.weights.reshape(n, 1, 1, 1, 1, 1)
    f = data.frequency
    if antennas is None:
        bl = np.zeros(n)
    else:
        ant = np.asarray(antennas, dtype=np.int64)
        if ant.shape != (n, 2):
            raise ValueError(f"antennas must have shape ({n}, 2), got {ant.shape}")
        bl = 256.0 * ant[:, 0] + ant[:, 1]
    gd = fits.GroupData(arr, parnames=["UU", "VV", "WW", "BASELINE", "DATE"],
                        pardata=[data.uv[:, 0] / f, data.uv[:, 1] / f, np.zeros(n), bl, np.full(n, 2451545.0)],
                        bitpix=-64)
    hdu = fits.GroupsHDU(gd)
    h = hdu.header
    axes = [("COMPLEX", 1.0, 1.0), ("STOKES", 1.0, 1.0), ("FREQ", f, 1.0), ("IF", 1.0, 1.0), ("RA", ra, 1.0),
            ("DEC", dec, 1.0)]
    for i, (ctype, crval, cdelt) in enumerate(axes, start=2):
        h[f"CTYPE{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"], h[f"CRPIX{i}"], h[f"CROTA{i}"] = ctype, crval, cdelt, 1.0, 0.0
    h["OBJECT"], h["TELESCOP"], h["BUNIT"], h["EQUINOX"] = obj, telescope, "JY", 2000.0
    h["OBSRA"], h["OBSDEC"] = ra, dec
    h["HISTORY"] = "written by lensinv.uv.write_uvfits; weights are 1/sigma^2 per real and imaginary part"
    with atomic_path(path) as tmp:
        fits.HDUList([hdu]).writeto(tmp, output_verify="exception")


def _axis_values(h, i: int) -> np.ndarray:
    n = int(h[f"NAXIS{i}"])
    return float(h.get(f"CRVAL{i}", 0.0)) + (np.arange(n) + 1 - float(h.get(f"CRPIX{i}", 1.0))) * float(
        h.get(f"CDELT{i}", 1.0))


def read_uvfits(path: PathLike) -> Visibilities:
    """Read Stokes I visibilities from a uvfits random-groups file.

    Every channel (and IF, with the offsets of an ``AIPS FQ`` table) becomes its own set of
    visibilities at ``u = UU * frequency`` (wavelengths). Stokes I is taken as it is, or made from
    the parallel hands (RR, LL or XX, YY) as their inverse-variance weighted mean (an unpolarised
    source); a single hand is used alone. Visibilities with weight <= 0 (flagged) are left out.
    ``sigma = 1/sqrt(weight)``, per real and imaginary part.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdu = hdul[0]
        if not isinstance(hdu, fits.GroupsHDU):
            raise ValueError(f"{path}: not a uvfits file (the primary HDU holds no random groups)")
        h = hdu.header
        naxis = int(h["NAXIS"])
        ctypes = {str(h.get(f"CTYPE{i}", "")).strip().upper(): i for i in range(2, naxis + 1)}
        for need in ("COMPLEX", "FREQ"):
            if need not in ctypes:
                raise ValueError(f"{path}: uvfits data need a {need} axis (CTYPE), have {sorted(ctypes)}")
        names = [str(p).upper() for p in hdu.data.parnames]

        def par(prefix: str) -> np.ndarray:
            for k, nm in enumerate(names):
                if nm.startswith(prefix):
                    return np.asarray(hdu.data.par(k), dtype=np.float64)
            raise ValueError(f"{path}: no {prefix} random parameter (have {names})")

        uu, vv = par("UU"), par("VV")
        raw = np.asarray(hdu.data.data, dtype=np.float64)
        # numpy axis of FITS axis i is naxis - i + 1 (axis 0 is the group)
        order = {name: naxis - i + 1 for name, i in ctypes.items()}
        freqs = _axis_values(h, ctypes["FREQ"])
        if_off = np.zeros(1)
        if "IF" in ctypes and int(h[f"NAXIS{ctypes['IF']}"]) > 1:
            if "AIPS FQ" not in hdul:
                raise ValueError(f"{path}: several IFs but no AIPS FQ table with their frequency offsets")
            if_off = np.asarray(hdul["AIPS FQ"].data["IF FREQ"][0], dtype=np.float64).reshape(-1)
        stokes = _axis_values(h, ctypes["STOKES"]).round().astype(int) if "STOKES" in ctypes else np.array([1])
    # move to (group, IF, FREQ, STOKES, COMPLEX), dropping the other (length-1) axes
    keep = [order[k] for k in ("IF", "FREQ", "STOKES", "COMPLEX") if k in order]
    other = [a for a in range(1, raw.ndim) if a not in keep]
    if any(raw.shape[a] != 1 for a in other):
        raise ValueError(f"{path}: unsupported uvfits axes (only RA/DEC of length 1 besides IF, FREQ, STOKES, COMPLEX)")
    arr = np.transpose(raw, [0] + other + keep).reshape((raw.shape[0],) + tuple(raw.shape[a] for a in keep))
    if "IF" not in order:
        arr = arr[:, None]
    if "STOKES" not in order:
        arr = arr[:, :, :, None]
    re_, im_, wt = arr[..., 0], arr[..., 1], arr[..., 2] if arr.shape[-1] > 2 else np.ones(arr.shape[:-1])
    vis_s = re_ + 1j * im_
    pick = _stokes_i(stokes, str(path))
    wt = np.where(np.isfinite(wt) & np.isfinite(vis_s), wt, 0.0)
    wt = np.where(wt > 0, wt, 0.0)
    w_i = wt[..., pick].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        v_i = np.where(w_i > 0, (np.where(wt[..., pick] > 0, vis_s[..., pick], 0) * wt[..., pick]).sum(-1) / w_i, 0)
    # frequency of each (IF, channel)
    f_ic = freqs[None, :] + if_off[:, None]  # (n_if, n_chan)
    u = uu[:, None, None] * f_ic[None]
    v = vv[:, None, None] * f_ic[None]
    ok = w_i > 0
    n_flag = int(ok.size - ok.sum())
    if n_flag:
        log.info("%s: %d of %d visibilities flagged (weight <= 0), left out", path, n_flag, ok.size)
    if not ok.any():
        raise ValueError(f"{path}: every visibility is flagged (weight <= 0)")
    return Visibilities(uv=np.stack([u[ok], v[ok]], axis=1), vis=v_i[ok], sigma=1.0 / np.sqrt(w_i[ok]),
                        frequency=float(np.mean(f_ic)))


def _stokes_i(stokes: np.ndarray, path: str) -> list[int]:
    """Indices (into the Stokes axis) averaged into Stokes I."""
    where = {int(s): k for k, s in enumerate(stokes)}
    if 1 in where:
        return [where[1]]
    for a, b in ((-1, -2), (-5, -6)):
        hands = [where[s] for s in (a, b) if s in where]
        if hands:
            return hands
    raise ValueError(f"{path}: no Stokes I or parallel-hand correlations (have "
                     f"{[_STOKES.get(int(s), int(s)) for s in stokes]})")


# ---------------------------------------------------------------------------------------------
# measurement sets (optional: python-casacore)
def have_casacore() -> bool:
    """Whether python-casacore (measurement sets) is importable."""
    try:
        import casacore.tables  # noqa: F401
    except ImportError:
        return False
    return True


def read_ms(path: PathLike, column: str = "DATA") -> Visibilities:
    """Read Stokes I visibilities from a CASA measurement set (needs python-casacore).

    Every channel of every spectral window becomes its own visibilities (``u = UVW_u / lambda``);
    Stokes I is made from the parallel hands as in :func:`read_uvfits`, from the ``WEIGHT`` column
    (or ``SIGMA`` where WEIGHT is absent), leaving out flagged data. ``sigma = 1/sqrt(weight)``.
    """
    try:
        import casacore.tables as ct
    except ImportError as exc:
        raise ImportError("reading measurement sets needs python-casacore: pip install 'lensinv[casa]'") from exc
    path = str(path)
    with ct.table(path, ack=False) as t:
        if column not in t.colnames():
            raise ValueError(f"{path}: no {column} column (have {t.colnames()})")
        uvw = np.asarray(t.getcol("UVW"), dtype=np.float64)
        vis = np.asarray(t.getcol(column))  # (rows, chan, corr)
        flag = np.asarray(t.getcol("FLAG"), dtype=bool)
        if "FLAG_ROW" in t.colnames():
            flag |= np.asarray(t.getcol("FLAG_ROW"), dtype=bool)[:, None, None]
        if "WEIGHT" in t.colnames() and t.iscelldefined("WEIGHT", 0):
            wt = np.asarray(t.getcol("WEIGHT"), dtype=np.float64)  # (rows, corr)
        else:
            wt = 1.0 / np.asarray(t.getcol("SIGMA"), dtype=np.float64) ** 2
        ddid = np.asarray(t.getcol("DATA_DESC_ID"), dtype=np.int64)
    with ct.table(path + "/DATA_DESCRIPTION", ack=False) as t:
        spw_of = np.asarray(t.getcol("SPECTRAL_WINDOW_ID"), dtype=np.int64)
        pol_of = np.asarray(t.getcol("POLARIZATION_ID"), dtype=np.int64)
    with ct.table(path + "/SPECTRAL_WINDOW", ack=False) as t:
        chan_freq = [np.asarray(t.getcell("CHAN_FREQ", r), dtype=np.float64) for r in range(t.nrows())]
    with ct.table(path + "/POLARIZATION", ack=False) as t:
        corr = [np.asarray(t.getcell("CORR_TYPE", r), dtype=np.int64) for r in range(t.nrows())]
    # CASA's Stokes enumeration: I=1, RR=5, LL=8, XX=9, YY=12 -> the uvfits codes
    casa_to_fits = {1: 1, 5: -1, 6: -3, 7: -4, 8: -2, 9: -5, 10: -7, 11: -8, 12: -6}
    us, vs, vi, si, fr = [], [], [], [], []
    for dd in np.unique(ddid):
        rows = ddid == dd
        f = chan_freq[spw_of[dd]]
        stokes = np.array([casa_to_fits.get(int(c), 0) for c in corr[pol_of[dd]]])
        pick = _stokes_i(stokes, path)
        w = np.where(flag[rows][:, :, pick], 0.0, wt[rows][:, None, pick])
        d = vis[rows][:, :, pick]
        w = np.where(np.isfinite(d) & (w > 0), w, 0.0)
        w_i = w.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            v_i = np.where(w_i > 0, (np.where(w > 0, d, 0) * w).sum(-1) / w_i, 0)
        lam = C_LIGHT / f
        u = uvw[rows, 0][:, None] / lam[None]
        v = uvw[rows, 1][:, None] / lam[None]
        ok = w_i > 0
        us.append(u[ok]), vs.append(v[ok]), vi.append(v_i[ok]), si.append(1.0 / np.sqrt(w_i[ok])), fr.append(f)
    u, v = np.concatenate(us), np.concatenate(vs)
    if u.size == 0:
        raise ValueError(f"{path}: every visibility is flagged")
    return Visibilities(uv=np.stack([u, v], axis=1), vis=np.concatenate(vi), sigma=np.concatenate(si),
                        frequency=float(np.mean(np.concatenate(fr))))


def write_ms(path: PathLike, data: Visibilities, *, overwrite: bool = False) -> None:
    """Write Stokes I visibilities as a minimal measurement set (one spectral window of one channel
    at ``data.frequency``, one correlation ``I``; UVW in metres, WEIGHT ``1/sigma^2``; DATA, WEIGHT
    and SIGMA are single precision, as in CASA); needs
    python-casacore. Written into a temporary folder beside ``path`` and renamed into place."""
    import shutil

    import casacore.tables as ct

    if data.frequency is None:
        raise ValueError("data.frequency (Hz) is needed to write a measurement set (UVW in metres)")
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (pass overwrite=True to replace it)")
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    n = data.n_vis
    lam = C_LIGHT / data.frequency
    try:
        desc = ct.maketabdesc([ct.makearrcoldesc("DATA", 0j, ndim=2, valuetype="complex")])
        with ct.default_ms(str(tmp), desc) as t:
            t.addrows(n)
            uvw = np.zeros((n, 3))
            uvw[:, :2] = data.uv * lam
            t.putcol("UVW", uvw)
            t.putcol("DATA", data.vis.reshape(n, 1, 1))
            t.putcol("FLAG", np.zeros((n, 1, 1), dtype=bool))
            t.putcol("WEIGHT", data.weights.reshape(n, 1))
            t.putcol("SIGMA", data.sigma.reshape(n, 1))
            t.putcol("DATA_DESC_ID", np.zeros(n, dtype=np.int32))
        with ct.default_ms_subtable("SPECTRAL_WINDOW", str(tmp) + "/SPECTRAL_WINDOW") as t:
            t.addrows(1)
            t.putcell("CHAN_FREQ", 0, np.array([data.frequency]))
            t.putcell("NUM_CHAN", 0, 1)
        with ct.default_ms_subtable("POLARIZATION", str(tmp) + "/POLARIZATION") as t:
            t.addrows(1)
            t.putcell("CORR_TYPE", 0, np.array([1], dtype=np.int32))
            t.putcell("NUM_CORR", 0, 1)
        with ct.default_ms_subtable("DATA_DESCRIPTION", str(tmp) + "/DATA_DESCRIPTION") as t:
            t.addrows(1)
            t.putcell("SPECTRAL_WINDOW_ID", 0, 0)
            t.putcell("POLARIZATION_ID", 0, 0)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_visibilities(path: PathLike) -> Visibilities:
    """Read visibilities by file type: ``.npz``, uvfits (``.uvfits``, ``.uvf``, ``.fits``, ``.fit``) or a
    measurement-set folder (``.ms`` or any folder, with python-casacore)."""
    p = Path(path)
    if p.is_dir():
        return read_ms(p)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return read_npz(p)
    if suffix in (".uvfits", ".uvf", ".fits", ".fit", ".fts"):
        return read_uvfits(p)
    raise ValueError(f"path must be a .npz, a uvfits file or a measurement set, got {str(path)!r}")


# ---------------------------------------------------------------------------------------------
# uv-coverage simulation
@dataclass(frozen=True, eq=False)
class ArrayLayout:
    """Antenna positions of an interferometer.

    Parameters
    ----------
    name : str
    enu : ndarray
        ``(n_ant, 3)`` east, north, up offsets from the array centre (metres).
    latitude : float
        Geodetic latitude of the array centre (degrees).
    dish_diameter : float
        Antenna diameter (metres).
    """

    name: str
    enu: np.ndarray
    latitude: float
    dish_diameter: float

    def __post_init__(self) -> None:
        enu = np.asarray(self.enu, dtype=np.float64)
        if enu.ndim != 2 or enu.shape[1] != 3 or enu.shape[0] < 2:
            raise ValueError(f"enu must have shape (n_ant >= 2, 3) in metres, got {enu.shape}")
        if not np.all(np.isfinite(enu)):
            raise ValueError("enu contains NaN or inf values")
        enu.flags.writeable = False
        object.__setattr__(self, "enu", enu)
        lat = float(self.latitude)
        if not -90.0 <= lat <= 90.0:
            raise ValueError(f"latitude must be in [-90, 90] degrees, got {self.latitude!r}")
        object.__setattr__(self, "dish_diameter", positive_float("dish_diameter", self.dish_diameter))

    @property
    def n_antennas(self) -> int:
        return int(self.enu.shape[0])

    @property
    def baselines(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs, enu)``: the ``(n_bl, 2)`` 0-based antenna pairs ``a < b`` and their ``b - a`` ENU
        vectors (metres)."""
        a, b = np.triu_indices(self.n_antennas, k=1)
        return np.stack([a, b], axis=1), self.enu[b] - self.enu[a]

    @property
    def max_baseline(self) -> float:
        """Longest baseline (metres)."""
        return float(np.linalg.norm(self.baselines[1], axis=1).max())


ALMA_CONFIGURATIONS = {"compact": 500.0, "intermediate": 1400.0, "extended": 2500.0, "long": 8500.0}
"""Target longest baselines (metres) of :func:`alma_layout`'s configurations, as ALMA's C43-3,
C43-5, C43-6 and C43-8 (ALMA Cycle 10 Proposer's Guide: 0.50, 1.40, 2.52, 8.55 km; at 230 GHz
the synthesized beam is then about 0.6, 0.2, 0.06 and 0.02 arcsec)."""


def alma_layout(configuration: str = "extended", n_antennas: int = 43, seed: int = 0) -> ArrayLayout:
    """An ALMA-like 12-m array: a documented, reproducible layout (not ALMA's real pads).

    A third of the antennas fill a core of radius ``0.08 B``, the rest lie on three spiral arms
    120 degrees apart whose radius grows logarithmically to ``B / 2`` (a centrally condensed,
    nearly scale-free distribution like ALMA's), with ~4% positional scatter; antennas are kept
    at least 15 m apart (12 m dishes). The layout is then scaled so its longest baseline is
    ``B``, the configuration's (:data:`ALMA_CONFIGURATIONS`). Heights are 0 (a flat plateau).

    Parameters
    ----------
    configuration : {"compact", "intermediate", "extended", "long"}
    n_antennas : int
        >= 4 (ALMA's 12-m array uses 43 in its main configurations).
    seed : int
        Random seed of the scatter (the default layout is fixed).
    """
    if configuration not in ALMA_CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {sorted(ALMA_CONFIGURATIONS)}, got {configuration!r}")
    n = int_at_least("n_antennas", n_antennas, 4)
    B = ALMA_CONFIGURATIONS[configuration]
    rng = np.random.default_rng(np.random.SeedSequence([20240331, int(seed)]))
    n_core = max(1, n // 3)
    pos: list[np.ndarray] = []

    def far_enough(p: np.ndarray, min_sep: float) -> bool:
        return all(np.hypot(*(p - q)) >= min_sep for q in pos)

    r_core = 0.08 * B
    min_sep = min(15.0, 0.5 * r_core / math.sqrt(n_core))
    while len(pos) < n_core:
        r, t = r_core * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        p = np.array([r * math.cos(t), r * math.sin(t)])
        if far_enough(p, min_sep):
            pos.append(p)
    n_arm = n - n_core
    for k in range(n_arm):
        arm, rank = k % 3, k // 3
        per_arm = (n_arm + 2 - arm) // 3
        frac = (rank + 1) / per_arm
        r = r_core * (0.5 * B / r_core) ** frac
        t = 2 * math.pi * arm / 3 + 1.2 * math.log(r / r_core) + 0.3
        while True:
            p = np.array([r * math.cos(t), r * math.sin(t)]) * (1 + 0.04 * rng.normal(size=2))
            if far_enough(p, min_sep):
                break
        pos.append(p)
    xy = np.array(pos)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1).max()
    xy *= B / d
    enu = np.column_stack([xy, np.zeros(n)])
    return ArrayLayout(name=f"alma-like-{configuration}", enu=enu, latitude=ALMA_LATITUDE, dish_diameter=12.0)


@dataclass(frozen=True, eq=False)
class SimulatedCoverage:
    """What :func:`simulate_coverage` returns.

    Attributes
    ----------
    uv : ndarray
        ``(n_vis, 2)`` baselines (wavelengths), ordered by time, then channel, then baseline.
    w : ndarray
        ``(n_vis,)`` the w coordinate (wavelengths; the operator assumes a narrow field, w ignored).
    antennas : ndarray
        ``(n_vis, 2)`` 1-based antenna numbers.
    hour_angle : ndarray
        ``(n_vis,)`` hour angle of each sample (hours).
    frequency : ndarray
        ``(n_vis,)`` frequency of each sample (Hz).
    layout : ArrayLayout
    integration_time : float
        Seconds per sample.
    """

    uv: np.ndarray
    w: np.ndarray
    antennas: np.ndarray
    hour_angle: np.ndarray
    frequency: np.ndarray
    layout: ArrayLayout
    integration_time: float

    @property
    def n_vis(self) -> int:
        return int(self.uv.shape[0])

    @cached_property
    def coverage(self) -> UVCoverage:
        """As a :class:`lensinv.UVCoverage` (one per simulation, sharing its beam cache)."""
        return UVCoverage(self.uv)


def enu_to_xyz(enu: np.ndarray, latitude: float) -> np.ndarray:
    """Baselines from local (east, north, up) to equatorial (X, Y, Z) metres (TMS eq. 4.4)."""
    phi = math.radians(latitude)
    e, nn, up = enu[..., 0], enu[..., 1], enu[..., 2]
    return np.stack([-math.sin(phi) * nn + math.cos(phi) * up, e, math.cos(phi) * nn + math.sin(phi) * up], axis=-1)


def simulate_coverage(layout: ArrayLayout, declination: float = -30.0, hour_angle: tuple[float, float] = (-1.0, 1.0),
                      integration_time: float = 30.0, frequencies: Union[float, Sequence[float]] = 230e9,
                      min_elevation: float = 15.0) -> SimulatedCoverage:
    """Earth-rotation synthesis: the ``(u, v)`` of every baseline, integration and channel.

    ``(u, v, w) = R(H, dec) (X, Y, Z) / lambda`` with ``(X, Y, Z)`` the equatorial baseline
    (:func:`enu_to_xyz`) and ``H`` the hour angle (Thompson, Moran & Swenson eq. 4.1); samples with
    the source below ``min_elevation`` are dropped.

    Parameters
    ----------
    layout : ArrayLayout
    declination : float
        Source declination (degrees).
    hour_angle : (float, float)
        Start and end hour angle (hours); samples at the middle of each integration.
    integration_time : float
        Seconds per visibility (> 0).
    frequencies : float or sequence of float
        Channel frequencies (Hz, > 0); each channel gives its own visibilities.
    min_elevation : float
        Degrees.
    """
    dec = math.radians(float(declination))
    if not -math.pi / 2 <= dec <= math.pi / 2:
        raise ValueError(f"declination must be in [-90, 90] degrees, got {declination!r}")
    h0, h1 = (float(h) for h in hour_angle)
    if not (math.isfinite(h0) and math.isfinite(h1) and h1 > h0):
        raise ValueError(f"hour_angle must be (start, end) hours with end > start, got {hour_angle!r}")
    dt = positive_float("integration_time", integration_time)
    freqs = np.atleast_1d(np.asarray(frequencies, dtype=np.float64))
    if freqs.ndim != 1 or not np.all(np.isfinite(freqs)) or np.any(freqs <= 0):
        raise ValueError(f"frequencies must be finite and > 0 (Hz), got {frequencies!r}")
    step = dt / SIDEREAL_DAY * 24.0  # hours of hour angle per integration
    n_t = max(1, int(round((h1 - h0) / step)))
    H_hours = h0 + (np.arange(n_t) + 0.5) * (h1 - h0) / n_t
    H = H_hours * math.pi / 12.0
    phi = math.radians(layout.latitude)
    sin_el = math.sin(phi) * math.sin(dec) + math.cos(phi) * math.cos(dec) * np.cos(H)
    up = sin_el >= math.sin(math.radians(float(min_elevation)))
    if not up.any():
        raise ValueError("the source never rises above min_elevation in that hour-angle range")
    H, H_hours = H[up], H_hours[up]
    pairs, benu = layout.baselines
    X, Y, Z = enu_to_xyz(benu, layout.latitude).T
    sH, cH = np.sin(H)[:, None], np.cos(H)[:, None]
    u_m = sH * X + cH * Y
    v_m = -math.sin(dec) * cH * X + math.sin(dec) * sH * Y + math.cos(dec) * Z
    w_m = math.cos(dec) * cH * X - math.cos(dec) * sH * Y + math.sin(dec) * Z
    inv_lam = freqs / C_LIGHT  # (n_f,)
    shape = (H.size, freqs.size, pairs.shape[0])
    u = (u_m[:, None, :] * inv_lam[None, :, None]).reshape(-1)
    v = (v_m[:, None, :] * inv_lam[None, :, None]).reshape(-1)
    w = (w_m[:, None, :] * inv_lam[None, :, None]).reshape(-1)
    ant = np.broadcast_to(pairs[None, None] + 1, shape + (2,)).reshape(-1, 2)
    ha = np.broadcast_to(H_hours[:, None, None], shape).reshape(-1)
    fr = np.broadcast_to(freqs[None, :, None], shape).reshape(-1)
    return SimulatedCoverage(uv=np.stack([u, v], axis=1), w=w, antennas=np.ascontiguousarray(ant),
                             hour_angle=np.ascontiguousarray(ha), frequency=np.ascontiguousarray(fr), layout=layout,
                             integration_time=dt)


def thermal_sigma(layout: ArrayLayout, integration_time: float, bandwidth: float, t_sys: float = 100.0,
                  aperture_efficiency: float = 0.7, correlator_efficiency: float = 0.88, n_pol: int = 2) -> float:
    """Thermal noise per real and per imaginary part of a Stokes I visibility (Jy).

    ``sigma = SEFD / (eta_c sqrt(n_pol 2 dnu t))`` with ``SEFD = 2 k T_sys / (eta_a pi D^2 / 4)``
    (the radiometer equation for one baseline, Wrobel & Walker 1999, eq. 9-8, per component,
    averaged over ``n_pol`` parallel-hand correlations).

    Parameters
    ----------
    layout : ArrayLayout
        For the dish diameter (metres).
    integration_time : float
        Seconds per visibility.
    bandwidth : float
        Hz per channel.
    t_sys : float
        System temperature (K; ~100 K is typical of ALMA band 6).
    aperture_efficiency, correlator_efficiency : float
        In (0, 1].
    n_pol : int
        Parallel-hand polarisations averaged into Stokes I (1 or 2).
    """
    t = positive_float("integration_time", integration_time)
    dnu = positive_float("bandwidth", bandwidth)
    tsys = positive_float("t_sys", t_sys)
    for name, val in (("aperture_efficiency", aperture_efficiency), ("correlator_efficiency", correlator_efficiency)):
        if not 0 < positive_float(name, val) <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {val!r}")
    npol = int_at_least("n_pol", n_pol, 1)
    area = math.pi * layout.dish_diameter**2 / 4
    sefd = 2 * K_BOLTZMANN * tsys / (aperture_efficiency * area) / JY
    return sefd / (correlator_efficiency * math.sqrt(2.0 * npol * dnu * t))


def gaussian_primary_beam(image_grid: ImageGrid, frequency: float, dish_diameter: float = 12.0,
                          center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A Gaussian primary beam of FWHM ``1.13 lambda / D`` (ALMA's 12-m antennas) on the image
    grid, peak 1 at ``center`` (arcsec); ``frequency`` in Hz, ``dish_diameter`` in metres."""
    f = positive_float("frequency", frequency)
    D = positive_float("dish_diameter", dish_diameter)
    fwhm = 1.13 * C_LIGHT / f / D / ARCSEC  # arcsec
    x, y = image_grid.coordinates()
    s = fwhm / math.sqrt(8 * math.log(2))
    return np.exp(-0.5 * ((x - center[0]) ** 2 + (y - center[1]) ** 2) / s**2)


def simulate_visibilities(op, source: np.ndarray, sigma: Union[float, np.ndarray], rng: np.random.Generator,
                          frequency: Optional[float] = None) -> Visibilities:
    """Noisy visibilities ``op.apply(source) + n`` with ``n`` Gaussian of ``sigma`` (Jy) per real and
    imaginary part; ``source`` in Jy/pixel (source grid), ``op`` a :class:`lensinv.VisibilityOperator`."""
    model = op.apply(source)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), model.shape)
    noise = sig * (rng.standard_normal(model.shape) + 1j * rng.standard_normal(model.shape))
    return Visibilities(uv=op.uv, vis=model + noise, sigma=np.ascontiguousarray(sig), frequency=frequency)


# ---------------------------------------------------------------------------------------------
# a simulated interferometric observation (the alma preset of lensinv.simulate)
@dataclass(frozen=True)
class InterferometerConfig:
    """How simulated lenses are observed by an interferometer (recorded in data sets as JSON).

    Parameters
    ----------
    configuration : str
        :func:`alma_layout` configuration (``compact``, ``intermediate``, ``extended``, ``long``).
    n_antennas : int
        Antennas of the layout (>= 2).
    layout_seed : int
        Seed of the layout's scatter (>= 0).
    declination : float
        Source declination (degrees).
    hour_angle : (float, float)
        Start and end hour angle of the track (hours).
    integration_time : float
        Seconds per (time-averaged) visibility, > 0.
    frequencies : tuple of float
        Channel frequencies (Hz, > 0); each channel gives its own visibilities.
    min_elevation : float
        Samples below this elevation (degrees) are dropped.
    primary_beam : bool
        Attenuate the sky by the 12-m antennas' Gaussian primary beam at the mean frequency
        (:func:`gaussian_primary_beam`, centred on the phase centre).

    Notes
    -----
    The noise is thermal and the same for every visibility (equal integration times and
    bandwidths); its level is set per lens by the preset's peak S/N of the dirty image
    (:mod:`lensinv.simulate`), which is the radiometer noise of :func:`thermal_sigma` for a source
    of the corresponding surface brightness.
    """

    configuration: str = "extended"
    n_antennas: int = 43
    layout_seed: int = 0
    declination: float = -30.0
    hour_angle: tuple[float, float] = (-2.0, 2.0)
    integration_time: float = 300.0
    frequencies: tuple[float, ...] = (224e9, 240e9)
    min_elevation: float = 15.0
    primary_beam: bool = True

    def __post_init__(self) -> None:
        if self.configuration not in ALMA_CONFIGURATIONS:
            raise ValueError(f"configuration must be one of {', '.join(ALMA_CONFIGURATIONS)}, got "
                             f"{self.configuration!r}")
        int_at_least("n_antennas", self.n_antennas, 2)
        int_at_least("layout_seed", self.layout_seed, 0)
        try:
            h0, h1 = (float(h) for h in self.hour_angle)
        except (TypeError, ValueError):
            raise ValueError(f"hour_angle must be (start, end) hours, got {self.hour_angle!r}") from None
        if not (math.isfinite(h0) and math.isfinite(h1) and h1 > h0):
            raise ValueError(f"hour_angle must be (start, end) hours with end > start, got {self.hour_angle!r}")
        object.__setattr__(self, "hour_angle", (h0, h1))
        positive_float("integration_time", self.integration_time)
        try:
            freqs = tuple(positive_float("frequencies", f) for f in np.atleast_1d(self.frequencies).tolist())
        except TypeError:
            raise ValueError(f"frequencies must be a sequence of numbers (Hz), got {self.frequencies!r}") from None
        if not freqs:
            raise ValueError("frequencies must name at least one channel (Hz)")
        object.__setattr__(self, "frequencies", freqs)
        if not isinstance(self.primary_beam, bool):
            raise ValueError(f"primary_beam must be a bool, got {self.primary_beam!r}")

    def simulated(self) -> SimulatedCoverage:
        """The Earth-rotation coverage (:func:`simulate_coverage`), computed once per process and
        configuration: operators built on its ``.coverage`` share one dirty-beam cache."""
        return _simulated(self)

    def primary_beam_map(self, image_grid: ImageGrid) -> Optional[np.ndarray]:
        """The ``(n, n)`` primary beam at the mean frequency, or None without one."""
        if not self.primary_beam:
            return None
        return gaussian_primary_beam(image_grid, float(np.mean(self.frequencies)))


@lru_cache(maxsize=4)
def _simulated(config: InterferometerConfig) -> SimulatedCoverage:
    layout = alma_layout(config.configuration, config.n_antennas, config.layout_seed)
    cov = simulate_coverage(layout, config.declination, config.hour_angle, config.integration_time,
                            config.frequencies, config.min_elevation)
    log.info("%s: %d visibilities (%d baselines, %.0f s integrations, %d channels), |uv|max %.3g wavelengths",
             layout.name, cov.n_vis, len(layout.baselines[0]), config.integration_time, len(config.frequencies),
             float(np.abs(cov.uv).max()))
    return cov
