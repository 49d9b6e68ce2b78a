# Sourced by bench/demo.sh and tests/run.sh: creates .venv, installs the pinned dependencies and builds
# the extension, from nothing. Re-running is cheap: it reinstalls only when the build inputs changed.
set -euo pipefail
KVI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KVI_VENV="${KVI_VENV:-$KVI_ROOT/.venv}"
cd "$KVI_ROOT"
if [ ! -x "$KVI_VENV/bin/python" ]; then
    echo "[kvi] creating virtual environment in $KVI_VENV"
    python3 -m venv "$KVI_VENV"
fi
PY="$KVI_VENV/bin/python"
want="$(cat pyproject.toml setup.py $(ls csrc/*.cpp csrc/kvi/*.h 2>/dev/null | sort) | sha256sum | cut -c1-16)"
if [ "$(cat "$KVI_VENV/.kvi-build" 2>/dev/null)" != "$want" ]; then
    echo "[kvi] installing dependencies and building kvi_engine._core (torch pinned to 2.13.0, CPU wheel)"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel "pybind11>=2.12"
    # torch first and exact: a later unpinned requirement then finds it satisfied instead of pulling CUDA wheels.
    "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" numpy
    # An editable install through setuptools' meta path finder (it keeps the top-level kernels/ folder off sys.path:
    # Hugging Face owns that import name); setuptools warns about that mode on every install, nothing to act on.
    PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" \
        "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,bench,triton,serve]"
    echo "$want" > "$KVI_VENV/.kvi-build"
fi
export PATH="$KVI_VENV/bin:$PATH"
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
