#!/usr/bin/env bash
# The vLLM integration tests, in vLLM's own environment (.ci/run calls this after the main suite):
#
#     bash tests/vllm/run.sh [pytest args]      # e.g. tests/vllm/test_exact.py -k qwen2 -x
#
# Creates or reuses .venv-vllm (tests/vllm/env.sh), builds the fixtures (tiny random checkpoints and their banks),
# runs tests/vllm/test_*.py and prints how long each phase took. KVI_VLLM_FIXTURES=DIR keeps the fixtures there.
set -euo pipefail
t0=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
t1=$(date +%s)
if [ -n "${KVI_VLLM_FIXTURES:-}" ]; then
    FIX="$KVI_VLLM_FIXTURES"
else
    FIX="$(mktemp -d)"
    trap 'rm -rf "$FIX"' EXIT
fi
[ -f "$FIX/READY" ] || OMP_NUM_THREADS=1 "$VPY" tests/vllm/make_fixtures.py "$FIX"
t2=$(date +%s)
args=("$@")
paths=0
for a in "$@"; do [[ "$a" == tests/vllm* ]] && paths=1; done
[ "$paths" = 1 ] || args=(tests/vllm "${args[@]}")  # never the main suite: it needs the project's transformers
rc=0
KVI_VLLM_TESTS=1 KVI_VLLM_FIXTURES="$FIX" OMP_NUM_THREADS=1 \
    timeout 1800 "$VPY" -m pytest -q -p no:cacheprovider "${args[@]}" || rc=$?
t3=$(date +%s)
echo "[kvi-vllm] environment $((t1 - t0)) s, fixtures $((t2 - t1)) s, tests $((t3 - t2)) s, total $((t3 - t0)) s (rc $rc)"
exit $rc
