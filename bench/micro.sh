#!/usr/bin/env bash
# The micro-benchmarks on pytest-benchmark, small shapes (CI runs this; a few minutes): one entry per op x backend
# in the JSON, with pytest-benchmark's machine_info and commit_info. Arguments go to pytest, e.g.
#     bash bench/micro.sh --benchmark-autosave          # keep the run under .benchmarks/ for --benchmark-compare
#     KVI_MICRO=full bash bench/micro.sh                # the bench model's attention geometry, longer plans
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
out="${KVI_MICRO_JSON:-bench/results/micro.json}"
mkdir -p "$(dirname "$out")"
python -m pytest bench/micro --benchmark-only --benchmark-max-time=0.2 --benchmark-json "$out" -q -p no:cacheprovider "$@"
python - "$out" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
entries = doc["benchmarks"]
pairs = {(b["extra_info"]["op"], b["extra_info"]["backend"]) for b in entries}
ops = {op for op, _ in pairs}
assert doc["machine_info"].get("cpu") and "commit_info" in doc, "machine or commit missing"
triton = ["triton"] if __import__("torch").cuda.is_available() else []
want = ({("prefix_attention", b) for b in ["reference", "sdpa", "cpp"] + triton}
        | {(op, b) for op in ("codec_encode", "bank_dequant", "slot_gather", "decode_attention")
           for b in ("cpp", "reference")}
        | {("build_plan", "numpy"), ("decode_step", "cpp")}
        | {("traverse_2hop", b) for b in ("cpp", "reference", "networkx")}
        | {("link", b) for b in ("cpp", "reference", "pyahocorasick")})
assert pairs == want, f"op x backend pairs missing: {sorted(want - pairs)}; unexpected: {sorted(pairs - want)}"
print(f"micro-benchmarks: {len(entries)} entries, {len(pairs)} op x backend pairs -> {sys.argv[1]}")
PY
