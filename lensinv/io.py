"""Files: atomic writes and one FITS image reader.

Everything lensinv and its scripts write goes through :func:`atomic_write`
(temporary file in the same folder, fsync, rename), so a reader never sees a
partial file and an interrupted job never leaves a truncated one. Every FITS
image is read by :func:`read_fits_image`, which understands the
astropy/cfitsio extension syntax ``file.fits[EXT]`` (name, or index).
"""

from __future__ import annotations

import contextlib
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
