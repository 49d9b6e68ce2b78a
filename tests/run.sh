#!/usr/bin/env bash
# The test command: sets up .venv (deps + extension build) and runs the whole suite on the CPU.
# Triton kernels are exercised through the interpreter (TRITON_INTERPRET=1) on small shapes.
source "$(dirname "${BASH_SOURCE[0]}")/../bench/env.sh"
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}" HF_HUB_OFFLINE=1
exec python -m pytest -q "$@"
