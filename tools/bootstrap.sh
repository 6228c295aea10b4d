#!/usr/bin/env bash
# Create .venv/ with everything lensinv needs (called by make; idempotent).
# - SuiteSparse headers via apt-get when missing (root, Debian/Ubuntu), for scikit-sparse's CHOLMOD;
#   without them lensinv still works, with SciPy's slower sparse solvers.
# - torch pinned to the CPU build that pip finds locally (2.13.0), so set-up never pulls a multi-GB CUDA
#   build; on a GPU machine install your CUDA torch into the venv first and set LENSINV_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${LENSINV_TORCH:-torch==2.13.0}

have_cholmod_headers() {
    [ -f /usr/include/suitesparse/cholmod.h ] || [ -f /usr/include/cholmod.h ]
}

if ! have_cholmod_headers; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing libsuitesparse-dev (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsuitesparse-dev >/dev/null
    else
        echo "bootstrap: WARNING: SuiteSparse headers missing and apt-get unavailable; skipping scikit-sparse" >&2
    fi
fi

# CHOLMOD's supernodal factorisation runs on the system BLAS: Debian's reference BLAS is ~6x slower
# than OpenBLAS for the inversions in baselines/, so install OpenBLAS (it becomes the default libblas).
if ! ldconfig -p 2>/dev/null | grep -q libopenblas; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing libopenblas0-pthread (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null \
            || echo "bootstrap: WARNING: could not install OpenBLAS; CHOLMOD will use the reference BLAS" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel >/dev/null
if [ "$TORCH_SPEC" != skip ]; then
    "${PIP[@]}" install "$TORCH_SPEC"
fi
"${PIP[@]}" install -e ".[test]"
"${PIP[@]}" install -e ".[radio]" || echo "bootstrap: WARNING: finufft failed to install; visibility tests will skip" >&2
"${PIP[@]}" install -e ".[casa]" || echo "bootstrap: WARNING: python-casacore failed to install; measurement-set tests will skip" >&2
if have_cholmod_headers; then
    "${PIP[@]}" install -e ".[cholmod]" || echo "bootstrap: WARNING: scikit-sparse failed to build; SciPy fallback will be used" >&2
fi
echo "bootstrap: done ($("$VENV/bin/python" -c 'import lensinv, torch, numba; print("lensinv", lensinv.__version__, "torch", torch.__version__, "numba", numba.__version__)'))"
