"""argparse types for the command-line scripts: a bad value is an ``argparse`` error, which names the flag
and exits 2 before any work."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def number_in(low: float, high: float = math.inf, *, low_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number in ``(low, high]`` (``[low, high]`` with ``low_open=False``)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
        f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}")
        return value
    return parse


#: A finite number > 0.
positive_float = number_in(0.0)


def shard_spec(text: str) -> tuple[int, int]:
    """An argparse type: ``i/k`` (the i-th of k slices of an array job), integers with ``0 <= i < k``."""
    try:
        i, k = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be i/k (integers, 0 <= i < k), got {text!r}") from None
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f"must be i/k with 0 <= i < k, got {text!r}")
    return i, k
