"""Scale of the bank: a synthetic bank of 1M capsules (small model dims) -- open time, KV fetch latency of 64 random
capsules for one layer, resident memory (file-backed, RssFile) against the
pages touched, and update latency (add, remove) at that size.

    kvi bench bank-scale [--capsules 1000000] [--tokens 8] [--layers 2] [--kv-heads 2] [--head-dim 32]
                         [--quant int8] [--dir /tmp/kvi-scale]

Measurements run in a fresh process (imports excluded): 20 opens, then 64-capsule fetches. Writes
bench/results/bank_scale.{json,csv}.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.benchmarks import results
from kvi_engine.testing.synth_bank import create_random_bank, tagged_capsules

CHILD = """
import json, sys, time
import numpy as np, torch
from kvi_engine.bank.bank import KVBank
torch.set_num_threads(2)
def rss():  # file-backed resident pages: the mapped bank pages this process has touched
    return int(next(l for l in open('/proc/self/status') if l.startswith('RssFile')).split()[1]) * 1024
root, opens, trials, backend = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
res = {"open_s": []}
r0 = rss()
for _ in range(opens):
    t = time.perf_counter(); bank = KVBank.open(root); res["open_s"].append(time.perf_counter() - t)
res["open_rss_growth"] = rss() - r0
r0 = rss()
t = time.perf_counter(); ranges = bank.ranges.numpy(); res["first_use_tables_s"] = time.perf_counter() - t
live = np.asarray(bank.live_ids())
res["tables_rss_growth"] = rss() - r0
rng = np.random.default_rng(0)
idxs = []
for _ in range(trials):
    ids = rng.choice(live, 64, replace=False)
    idxs.append(np.concatenate([np.arange(s, s + n) for s, n in ranges[ids]]))
r0 = rss()
lat = []
for idx in idxs:
    t = time.perf_counter()
    bank.gather_kv(1, torch.from_numpy(idx), backend=None if backend == "auto" else backend)
    lat.append(time.perf_counter() - t)
res["fetch_s"] = lat
res["fetch_rss_growth"] = rss() - r0
pages = set()
for idx in idxs:
    for seg, _, local in bank.snapshot.split_tokens(idx):
        for name in ("k", "v", "k_scale", "v_scale", "k_zero", "v_zero"):
            if name in seg.c.sections:
                full = seg.c.array(name)
                off = seg.c.sections[name].offset + full.strides[0] * 1
                for t_ in local:
                    pages.add((seg.path.name, (off + int(t_) * full.strides[1]) // 4096))
res["pages_touched_bytes"] = 4096 * len(pages)
print(json.dumps(res))
"""


def measure(root, opens: int, trials: int, backend: str = "auto") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(opens), str(trials), backend],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(m: dict, prefix: str = "") -> dict:
    lat = sorted(m["fetch_s"])
    return {f"{prefix}open_ms_first": 1e3 * m["open_s"][0],
            f"{prefix}open_ms_median": 1e3 * statistics.median(m["open_s"]),
            f"{prefix}open_ms_max": 1e3 * max(m["open_s"]),
            f"{prefix}open_rss_growth_mib": m["open_rss_growth"] / 2**20,
            f"{prefix}first_use_tables_ms": 1e3 * m["first_use_tables_s"],
            f"{prefix}tables_rss_growth_mib": m["tables_rss_growth"] / 2**20,
            f"{prefix}fetch64_ms_median": 1e3 * statistics.median(lat),
            f"{prefix}fetch64_ms_p99": 1e3 * lat[max(0, int(0.99 * len(lat)) - 1)],
            f"{prefix}fetch_rss_growth_mib": m["fetch_rss_growth"] / 2**20,
            f"{prefix}fetch_pages_touched_mib": m["pages_touched_bytes"] / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench bank-scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capsules", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--dir", default="/tmp/kvi-scale")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="reuse a bank already in --dir")
    ap.add_argument("--out", default=str(results.default_out("bank_scale")))
    args = ap.parse_args(argv)
    root = Path(args.dir)
    dims = {"num_layers": args.layers, "num_kv_heads": args.kv_heads, "head_dim": args.head_dim}
    res = {}
    if not (args.keep and root.exists()):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        create_random_bank(root, args.capsules, args.tokens, args.quant, dims)
        res["create_s"] = time.perf_counter() - t
    bank = KVBank.open(root)
    res["file_mib"] = bank.nbytes / 2**20
    res["kv_mib"] = bank.kv_bytes / 2**20
    res["bytes_per_token"] = bank.bytes_per_token
    res.update(summary(measure(root, 20, args.trials)))
    if bank.spec.quantised:
        ref = measure(root, 1, 30, "reference")
        res["fetch64_reference_backend_ms_median"] = 1e3 * statistics.median(ref["fetch_s"])

    t = time.perf_counter()
    bank_updates.add_kv(root, *tagged_capsules(range(16), dims))
    res["add16_s"] = time.perf_counter() - t
    victims = KVBank.open(root).live_ids()[:32:2]
    t = time.perf_counter()
    bank_updates.remove(root, victims)
    res["remove16_s"] = time.perf_counter() - t
    res.update(summary(measure(root, 10, args.trials), "after_updates_"))

    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k.ljust(width)}  {v:,.3f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    results.write(args.out, "bank-scale", [res], vars(args))
    print(f"wrote {args.out}.json / .csv")
    return 0
