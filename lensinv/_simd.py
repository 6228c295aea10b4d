"""Let LLVM use 512-bit vectors in lensinv's Numba kernels where the CPU has AVX-512.

LLVM prefers 256-bit vectors on AVX-512 CPUs by default; the ray-tracing loops
are arithmetic-bound and run about 1.5x faster with 512-bit ones. Numba reads
its CPU features (``NUMBA_CPU_FEATURES``) once, when its CPU target is first
built, so this must run before the first compilation in the process. It is a
code-generation preference only: results are the same.

Set ``LENSINV_WIDE_SIMD=0`` to leave Numba's defaults alone; an explicit
``NUMBA_CPU_FEATURES`` is always respected.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def prefer_wide_vectors() -> bool:
    """Ask Numba for 512-bit vectors when the host supports AVX-512F; return whether it was set."""
    if os.environ.get("LENSINV_WIDE_SIMD", "1") == "0":
        return False
    from numba.core import config

    if config.CPU_FEATURES is not None or config.CPU_NAME is not None:
        return False
    try:
        from numba.core.codegen import get_host_cpu_features
    except ImportError:  # pragma: no cover - numba internals moved
        return False
    features = get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    config.CPU_FEATURES = features + ",-prefer-256-bit"
    log.debug("numba: preferring 512-bit vectors")
    return True
