"""Argument checks (public: solvers and scripts built on lensinv use them too): each raises ``ValueError`` naming the parameter."""

from __future__ import annotations

import math

import numpy as np


def finite_float(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite real number.

    Booleans and strings are refused (``float(True)`` and ``float("1")`` would pass silently).
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def positive_float(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise unless it is finite and > 0."""
    out = finite_float(name, value)
    if out <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


def int_at_least(name: str, value: int, minimum: int) -> int:
    """Return ``value`` as an int, or raise unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def pixel_array(name: str, values: np.ndarray, n: int, *, finite: bool = True) -> tuple[np.ndarray, bool]:
    """Flatten an ``n x n`` (or length ``n*n``) array to float64.

    Returns the flat array and whether the input was 2-D, so results can be
    returned in the caller's layout.
    """
    arr = real_array(name, values, finite=False)
    if arr.shape == (n * n,):
        flat, was_2d = arr, False
    elif arr.shape == (n, n):
        flat, was_2d = arr.reshape(-1), True
    else:
        raise ValueError(f"{name} must have shape ({n}, {n}) or ({n * n},), got {arr.shape}")
    if finite and not np.all(np.isfinite(flat)):
        raise ValueError(f"{name} contains NaN or inf values")
    return flat, was_2d


def real_array(name: str, values: np.ndarray, *, finite: bool = True) -> np.ndarray:
    """Return ``values`` as a float64 array, or raise ``ValueError`` naming ``name``.

    Complex values (the imaginary part would be dropped), strings and objects that are not
    numbers are refused; with ``finite`` so are NaN and inf.
    """
    raw = np.asarray(values)
    if np.iscomplexobj(raw):
        raise ValueError(f"{name} must be real, got a complex array (the imaginary part would be dropped)")
    try:
        arr = raw.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers, got {type(values).__name__} "
                         f"of dtype {raw.dtype}") from None
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr
