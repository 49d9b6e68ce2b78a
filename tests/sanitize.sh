#!/usr/bin/env bash
# The native core under AddressSanitizer + UBSan: builds the extension with KVI_SANITIZE=1 in a scratch copy of the
# tracked tree (the .venv's own build stays as it is), then runs the native, binding, bank and codec tests against
# it with the sanitizer runtimes preloaded (libstdc++ too, or ASan aborts on the first C++ exception). A report
# fails the run. About 4 min to build and 2-3 min to test on 2 cores. CI runs it after tests/run.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../bench/env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$work"
cd "$work"
echo "[kvi] building kvi_engine._core with ASan + UBSan in $work"
KVI_SANITIZE=1 python setup.py build_ext --inplace -q >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH="$work" HF_HUB_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider tests/test_graph.py tests/test_traverse.py tests/test_linker.py \
    tests/test_native_fuzz.py tests/test_native_parallel.py tests/test_bindings.py tests/test_bank.py \
    tests/test_bank_fuzz.py tests/test_quant.py tests/test_attention.py -k "not triton" "$@"
