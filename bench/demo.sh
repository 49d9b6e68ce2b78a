#!/usr/bin/env bash
# The main job: sets up .venv, compiles the shipped sample capsules with the default model (a tiny random
# model, announced loudly, when no real model can be loaded) and answers sample questions with and without
# injection, printing a timing table. Extra arguments go to `kvi demo` (e.g. --model /path/to/local/model).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec kvi demo "$@"
