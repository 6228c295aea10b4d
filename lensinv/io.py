"""Files: atomic writes, one FITS image reader and a lenstronomy-style HDF5 reader.

Everything lensinv and its scripts write goes through :func:`atomic_write`
(temporary file in the same folder, fsync, rename), so a reader never sees a
partial file and an interrupted job never leaves a truncated one. Every FITS
image is read by :func:`read_fits_image`, which understands the
astropy/cfitsio extension syntax ``file.fits[EXT]`` (name, or index).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

_EXT_SPEC = re.compile(r"^(?P<path>.*?)\[(?P<ext>[^\[\]]+)\]$")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : str or PathLike
        Final file name.
    mode : str
        ``"wb"`` (binary, default) or ``"w"`` (text).

    Examples
    --------
    >>> with atomic_write("out.npz") as f:  # doctest: +SKIP
    ...     np.savez(f, a=a)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Like :func:`atomic_write`, for writers that want a file name (h5py, torch, astropy).

    Yields the temporary path; once the block ends without an exception the file is fsynced and
    renamed onto ``path``. On an exception it is removed.
    """
    final = Path(path)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


@dataclass(frozen=True)
class FitsImage:
    """A 2-D image read from a FITS file.

    Attributes
    ----------
    data : ndarray
        float64, 2-D (a cube's leading axes summed).
    header : astropy.io.fits.Header
        The image HDU's header.
    source : str
        ``path[EXT]`` as read (for messages).
    """

    data: np.ndarray
    header: Any
    source: str


def split_fits_spec(spec: PathLike) -> tuple[Path, Optional[Union[int, str]]]:
    """Split ``file.fits[EXT]`` into the path and the extension (int index or name; None if absent)."""
    text = os.fspath(spec)
    m = _EXT_SPEC.match(text)
    if m is None or Path(text).exists():
        return Path(text), None
    ext: Union[int, str] = m.group("ext").strip()
    if re.fullmatch(r"\d+", str(ext)):
        ext = int(ext)
    return Path(m.group("path")), ext


def read_fits_image(spec: PathLike, hdu: Optional[Union[int, str]] = None, *, name: str = "image",
                    allow_cube: bool = False) -> FitsImage:
    """Read a 2-D image from a FITS file.

    Parameters
    ----------
    spec : str or PathLike
        File name, optionally with an extension: ``file.fits[VIS_FLUX]`` or ``file.fits[2]``.
    hdu : int or str, optional
        Extension (index or name), instead of the ``[EXT]`` suffix. Default: the first HDU
        holding a 2-D image.
    name : str
        What the file is, for error messages (``"PSF"``, ``"--image"``).
    allow_cube : bool
        Accept 3-D or higher data, summing the leading axes (e.g. bands of a galaxy image).

    Raises
    ------
    ValueError
        A clear message naming ``name`` and the file: missing file, a directory, an extension
        that does not exist, no 2-D image, or a file that is not FITS.
    """
    path, ext = split_fits_spec(spec)
    if ext is not None and hdu is not None:
        raise ValueError(f"{name}: give the extension either as {os.fspath(spec)!r} or as hdu={hdu!r}, not both")
    ext = hdu if ext is None else ext
    label = f"{os.fspath(path)}[{ext}]" if ext is not None else os.fspath(path)
    if path.is_dir():
        raise ValueError(f"{name} {os.fspath(path)!r} is a directory, not a FITS file")
    if not path.is_file():
        raise ValueError(f"{name} file {os.fspath(path)!r} does not exist")
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            if ext is not None:
                try:
                    chosen = hdul[ext]
                except (KeyError, IndexError):
                    names = [h.name for h in hdul]
                    raise ValueError(f"{name} file {os.fspath(path)!r} has no extension {ext!r} "
                                     f"(it has {len(hdul)}: {', '.join(names)})") from None
            else:
                ndim_ok = (lambda d: np.ndim(d) >= 2) if allow_cube else (lambda d: np.ndim(d) == 2)
                chosen = next((h for h in hdul if h.data is not None and ndim_ok(h.data)), None)
                if chosen is None:
                    raise ValueError(f"{name} file {os.fspath(path)!r} has no 2-D image HDU")
            data = chosen.data
            if data is None or np.ndim(data) < 2 or (np.ndim(data) > 2 and not allow_cube):
                raise ValueError(f"{name} {label!r} is not a 2-D image (shape {np.shape(data)})")
            img = np.array(data, dtype=np.float64)
            header = chosen.header.copy()
    except OSError as exc:
        raise ValueError(f"{name} file {os.fspath(path)!r} is not a readable FITS file: {exc}") from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(name):
            raise
        raise ValueError(f"{name} {label!r} cannot be read as an image: {exc}") from exc
    while img.ndim > 2:
        img = img.sum(axis=0)
    return FitsImage(data=img, header=header, source=label)


#: file-name endings read as lenstronomy-style HDF5 (:func:`read_lenstronomy_image`)
HDF5_SUFFIXES = (".h5", ".hdf5")
#: lenstronomy's floor on the exposure time (seconds) before dividing by it
_MIN_EXPOSURE = 1e-10


def is_hdf5(spec: PathLike) -> bool:
    """Whether a file name ends in ``.h5`` or ``.hdf5`` (case-insensitive)."""
    return Path(os.fspath(spec)).suffix.lower() in HDF5_SUFFIXES


@dataclass(frozen=True)
class LenstronomyImage:
    """An image in lenstronomy's HDF5 layout (``image_data``, ``background_rms``, ``exposure_time``,
    ``transform_pix2angle``), with its noise map.

    Attributes
    ----------
    data : ndarray
        float64 ``image_data`` (counts per second, or the file's units).
    sigma : ndarray
        Noise standard deviation per pixel, as lenstronomy's ``ImageNoise`` computes it:
        ``sqrt(background_rms^2 + max(data, 0) / max(exposure_time, 1e-10))`` (negative data carry no
        Poisson term).
    pixel_scale : float
        arcsec per pixel: ``sqrt(|det(transform_pix2angle)|)`` (square pixels).
    transform_pix2angle : ndarray
        ``(2, 2)`` arcsec per pixel step (lenstronomy's; its x axis usually points against the
        columns, east to the left: lensinv's ``x`` runs along the columns, so angles measured in
        lensinv's frame are those of the image as stored).
    source : str
        The file (for messages).
    """

    data: np.ndarray
    sigma: np.ndarray
    pixel_scale: float
    transform_pix2angle: np.ndarray
    source: str


def _h5_dataset(f: Any, key: str, name: str, path: Path) -> np.ndarray:
    if key not in f:
        raise ValueError(f"{name} file {os.fspath(path)!r} has no dataset {key!r} (it has {', '.join(sorted(f))})")
    return np.array(f[key][()], dtype=np.float64)


def _open_h5(path: Path, name: str):
    if path.is_dir():
        raise ValueError(f"{name} {os.fspath(path)!r} is a directory, not an HDF5 file")
    if not path.is_file():
        raise ValueError(f"{name} file {os.fspath(path)!r} does not exist")
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{name} file {os.fspath(path)!r} is not a readable HDF5 file: {exc}") from exc


def read_lenstronomy_image(path: PathLike, *, name: str = "image") -> LenstronomyImage:
    """Read an image and its noise from a lenstronomy-style HDF5 file (e.g. dolphin's data files).

    Parameters
    ----------
    path : str or PathLike
        HDF5 file with ``image_data`` (2-D), ``background_rms`` (scalar or the image's shape, image
        units), ``exposure_time`` (scalar or the image's shape, seconds) and
        ``transform_pix2angle`` (2 x 2, arcsec per pixel).
    name : str
        What the file is, for error messages.

    Returns
    -------
    LenstronomyImage

    Raises
    ------
    ValueError
        A missing file or dataset, non-2-D data, shapes that differ, a negative background rms, a
        singular or non-square-pixel transform.
    """
    path = Path(os.fspath(path))
    with _open_h5(path, name) as f:
        data = _h5_dataset(f, "image_data", name, path)
        rms = _h5_dataset(f, "background_rms", name, path)
        exposure = _h5_dataset(f, "exposure_time", name, path)
        T = _h5_dataset(f, "transform_pix2angle", name, path)
    label = os.fspath(path)
    if data.ndim != 2:
        raise ValueError(f"{name} {label!r}: image_data must be 2-D, got shape {data.shape}")
    for key, a in (("background_rms", rms), ("exposure_time", exposure)):
        if a.ndim != 0 and a.shape != data.shape:
            raise ValueError(f"{name} {label!r}: {key} must be a scalar or of image_data's shape {data.shape}, "
                             f"got {a.shape}")
    if np.any(rms < 0) or not np.all(np.isfinite(rms)):
        raise ValueError(f"{name} {label!r}: background_rms must be finite and >= 0")
    if T.shape != (2, 2) or not np.all(np.isfinite(T)) or abs(np.linalg.det(T)) == 0:
        raise ValueError(f"{name} {label!r}: transform_pix2angle must be a finite invertible 2 x 2 matrix, got {T!r}")
    sides = np.hypot(T[0], T[1])  # arcsec per step along the columns and the rows
    if not math.isclose(sides[0], sides[1], rel_tol=1e-3):
        raise ValueError(f"{name} {label!r}: pixels are not square ({sides[0]:.5g} x {sides[1]:.5g} arcsec)")
    exposure = np.maximum(np.where(np.isfinite(exposure), exposure, _MIN_EXPOSURE), _MIN_EXPOSURE)
    with np.errstate(invalid="ignore"):
        poisson = np.where(data >= 0, data, 0.0) / exposure
    sigma = np.sqrt(rms**2 + poisson)
    sigma = np.where(np.isfinite(data), sigma, np.nan)  # non-finite data: masked downstream
    return LenstronomyImage(data=data, sigma=np.broadcast_to(sigma, data.shape).copy(),
                            pixel_scale=float(math.sqrt(abs(np.linalg.det(T)))), transform_pix2angle=T,
                            source=label)


def read_lenstronomy_psf(path: PathLike, *, name: str = "PSF") -> np.ndarray:
    """The ``kernel_point_source`` (2-D, float64) of a lenstronomy-style HDF5 PSF file.

    Raises
    ------
    ValueError
        A missing file or dataset, or a kernel that is not 2-D.
    """
    path = Path(os.fspath(path))
    with _open_h5(path, name) as f:
        k = _h5_dataset(f, "kernel_point_source", name, path)
    if k.ndim != 2:
        raise ValueError(f"{name} {os.fspath(path)!r}: kernel_point_source must be 2-D, got shape {k.shape}")
    return k
