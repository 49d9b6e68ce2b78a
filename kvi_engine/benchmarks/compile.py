"""Compile throughput: one process without Ray, and Ray with 1, 2, … workers on this machine.

    kvi bench compile                         # ~100M-param CPU bench model, 512 capsules, 1 thread per worker
    kvi bench compile --workers 1 2 4 --capsules 2048 --threads 1 --quant int8

The corpus is the shipped sample (56 triples and 34 anchors) repeated to ``--capsules``: statements of real lengths
(5-25 tokens, mean ~13 with the bench tokenizer). Every configuration compiles the same capsules with the same
``--batch-size`` and ``--shard-size``, and every Ray bank is checked against the single-process one (identical
bits: ``identical`` in the rows). Ray workers start before the clock runs: start-up (process spawn, imports, model
load) is reported on its own, per worker too, and capsules/s is compile time only (first shard sent -> last shard
back -> manifest). ``store`` rows time the part of a compile after the forward (KV to numpy, encode, write) on
random KV of the model's shapes: what a GPU worker would still spend on its CPU per capsule. From those two
measured costs and a stated GPU FLOP rate (an assumption: no GPU here), it prints the estimate of what 10M capsules
take on 1, 8 and 64 GPU workers (``estimate`` in the results). Writes bench/results/compile.{json,csv}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kvi_engine.bank.segments import SegmentWriter
from kvi_engine.bank.spec import QuantSpec
from kvi_engine.benchmarks import results
from kvi_engine.capsules.capsule import load_capsules, load_entities
from kvi_engine.compile.compiler import capsule_statements, compile_bank, model_dims
from kvi_engine.testing.bank_compare import bank_differences
from kvi_engine.testing.tiny import bench_model, tiny_replica
from kvi_engine.utils.paths import sample_dir

MODELS = {"bench": bench_model, "tiny": tiny_replica}

# The 10M-capsule estimate (no GPU here: these are the stated assumptions, not measurements). Per model: parameters,
# layers, KV heads, head_dim, and an assumed sustained bf16 rate for its compile GEMMs (TFLOP/s: 20-40% of an H100's
# dense peak; a 0.5B model's small GEMMs reach less of it than a 7B model's).
GPU_MODELS = {"Qwen2.5-0.5B": (494e6, 24, 2, 64, 200.0), "Qwen2.5-7B": (7.6e9, 28, 4, 128, 400.0)}
REAL_TOKENS = 14      # a statement with a real tokenizer (the sample corpus with Qwen2.5's: 10-18)
PADDED_TOKENS = 17    # what a row costs in a length-sorted batch
WORKERS = (1, 8, 64)


def estimate(store: dict, cpu_capsules_per_s: float, cpu_params: int, cpu_tokens: float,
             n: int = 10_000_000) -> dict:
    """What ``n`` capsules take on N GPU workers: per worker, the lesser of the forward rate (2·P·t FLOPs a capsule at
    the assumed TFLOP/s) and the store rate (the KV a capsule makes, at this machine's measured store MB/s per core
    for that scheme: ``store`` as :func:`store_rate` returns it, per scheme). Hours for fp16 banks; per-worker rates
    for int8 and int4 too. Also the CPU side for comparison: ``n`` capsules at the measured single-process rate."""
    store_mb_per_s = store["fp16"]["mb_per_s"]
    bench_values = store["fp16"]["kv_bytes_per_capsule"] / 2   # K and V values a bench capsule stores (fp16: 2 B)
    cpu_gflops = 2 * cpu_params * cpu_tokens * cpu_capsules_per_s / 1e9
    rows = []
    for name, (params, layers, kv_heads, head_dim, tflops) in GPU_MODELS.items():
        values = layers * kv_heads * head_dim * 2 * REAL_TOKENS
        kv_bytes = {"fp16": values * 2, "int8": values, "int4": values / 2}   # codes only, scales not counted
        forward = tflops * 1e12 / (2 * params * PADDED_TOKENS)
        # the store encodes values: a scheme's measured capsules/s, scaled by the values a capsule holds
        rate = {q: store[q]["capsules_per_s"] * bench_values / values for q in ("fp16", "int8", "int4") if q in store}
        per_worker = min(forward, rate["fp16"])
        per_scheme = {f"capsules_per_s_per_worker_{q}": min(forward, rate[q]) for q in ("int8", "int4") if q in rate}
        rows.append({"model": name, "assumed_tflops": tflops, "forward_capsules_per_s": forward, **per_scheme,
                     "store_capsules_per_s": rate["fp16"], "capsules_per_s_per_worker": per_worker,
                     "bound": "store" if rate["fp16"] < forward else "forward",
                     **{f"hours_{w}_workers": n / (per_worker * w) / 3600 for w in WORKERS},
                     **{f"forward_only_hours_{w}_workers": n / (forward * w) / 3600 for w in WORKERS},
                     **{f"bank_gb_{q}": n * b / 1e9 for q, b in kv_bytes.items()}})
    return {"capsules": n, "cpu_achieved_gflops": cpu_gflops, "cpu_core_hours": n / cpu_capsules_per_s / 3600,
            "store_mb_per_s": store_mb_per_s, "real_tokens": REAL_TOKENS, "padded_tokens": PADDED_TOKENS,
            "rows": rows}


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def estimate_table(est: dict) -> str:
    """The markdown table of :func:`estimate` (what kvi_engine/distributed/README.md shows)."""
    lines = ["| model | per GPU worker (forward / store) | 10M capsules, 1 worker | 8 workers | 64 workers | "
             "forward only, 1 / 8 workers | int8 / int4 banks: per worker, 8 workers | bank (fp16 / int8 / int4) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in est["rows"]:
        lines.append(f"| {r['model']} | {r['capsules_per_s_per_worker']:,.0f} capsules/s "
                     f"({r['forward_capsules_per_s']:,.0f} / {r['store_capsules_per_s']:,.0f}) | "
                     f"{_duration(r['hours_1_workers'])} | {_duration(r['hours_8_workers'])} | "
                     f"{_duration(r['hours_64_workers'])} | {_duration(r['forward_only_hours_1_workers'])} / "
                     f"{_duration(r['forward_only_hours_8_workers'])} | "
                     f"{r['capsules_per_s_per_worker_int8']:,.0f} / {r['capsules_per_s_per_worker_int4']:,.0f} "
                     f"capsules/s, {_duration(est['capsules'] / r['capsules_per_s_per_worker_int8'] / 8 / 3600)} / "
                     f"{_duration(est['capsules'] / r['capsules_per_s_per_worker_int4'] / 8 / 3600)} | "
                     f"{r['bank_gb_fp16']:,.0f} / "
                     f"{r['bank_gb_int8']:,.0f} / {r['bank_gb_int4']:,.0f} GB |")
    return "\n".join(lines)


def corpus(n: int) -> list:
    """The sample corpus (triples, then anchors) repeated to ``n`` capsules."""
    caps, _ = capsule_statements(load_capsules(sample_dir() / "capsules.jsonl"),
                                 load_entities(sample_dir() / "entities.jsonl"))
    return [caps[i % len(caps)] for i in range(n)]


def store_rate(model, tokenizer, caps, quant: str, directory: Path) -> dict:
    """Seconds per capsule to store KV of the model's shapes: float32 tensors -> numpy -> encode -> segment file."""
    dims = model_dims(model)
    _, texts = capsule_statements(caps)
    lengths = np.array([len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts])
    spec = QuantSpec.parse(quant)
    rng = np.random.default_rng(0)
    k = torch.from_numpy(rng.standard_normal((int(lengths.sum()), dims["num_kv_heads"], dims["head_dim"]),
                                             dtype=np.float32))
    meta = [{**c.to_dict(), "kind": c.kind, "statement": s} for c, s in zip(caps, texts)]
    p = np.zeros((dims["num_layers"], 0, dims["num_kv_heads"], dims["head_dim"]), np.float32)
    t = time.perf_counter()
    w = SegmentWriter(directory / "store.kvb", spec, **dims, lengths=lengths,
                      token_ids=np.zeros(int(lengths.sum()), np.int32), meta=meta, capsule_ids=np.arange(len(caps)),
                      prefix_token_ids=[], prefix_k=p, prefix_v=p, header={})
    rows = np.arange(len(caps))
    for layer in range(dims["num_layers"]):
        w.put(layer, rows, k.numpy(), k.numpy())
    seg = w.close()
    s = time.perf_counter() - t
    return {"seconds": s, "capsules_per_s": len(caps) / s, "mb_per_s": os.path.getsize(seg.path) / s / 1e6,
            "kv_bytes_per_capsule": os.path.getsize(seg.path) / len(caps), "tokens_per_capsule": float(lengths.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench compile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="bench", help="bench: ~100M Qwen2; tiny: smoke run")
    ap.add_argument("--capsules", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--quant", default="fp16")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the single process and of each worker")
    ap.add_argument("--out", default=str(results.default_out("compile")))
    args = ap.parse_args(argv)
    from kvi_engine import distributed
    distributed.require_ray()

    make = MODELS[args.model]
    caps = corpus(args.capsules)
    kw = dict(batch_size=args.batch_size, shard_size=args.shard_size)
    work = Path(tempfile.mkdtemp(prefix="kvi-bench-compile-"))
    rows = []
    try:
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        model, tok = make()
        load_s = time.perf_counter() - t
        params = sum(p.numel() for p in model.parameters())
        t = time.perf_counter()
        ref = compile_bank(model, tok, caps, work / "single", args.quant, progress=False, **kw)
        s = time.perf_counter() - t
        rows.append({"mode": "1 process, no Ray", "workers": 0, "startup_s": load_s, "compile_s": s,
                     "capsules_per_s": len(caps) / s, "identical": True})
        print(f"1 process: {len(caps) / s:.1f} capsules/s ({s:.1f} s; model load {load_s:.1f} s)")
        store = {q: store_rate(model, tok, caps, q, work) for q in dict.fromkeys([args.quant, "fp16", "int8", "int4"])}
        del model

        t = time.perf_counter()
        distributed.connect("local", num_cpus=max(args.workers) * args.threads)
        ray_init_s = time.perf_counter() - t
        for n in args.workers:
            with distributed.CompilePool(make, num_workers=n, cpus_per_worker=args.threads) as pool:
                run = distributed.compile_bank(pool, caps, work / f"ray{n}", args.quant, **kw)
                same = bank_differences(ref, run.bank) == []
                rows.append({"mode": f"Ray, {n} worker{'s' * (n > 1)}", "workers": n, "startup_s": pool.startup_s,
                             "compile_s": run.compile_s + run.commit_s,
                             "capsules_per_s": len(caps) / (run.compile_s + run.commit_s), "identical": same,
                             "worker_spawn_import_s": [w["spawn_import_s"] for w in pool.infos],
                             "worker_load_s": [w["load_s"] for w in pool.infos]})
                print(f"Ray x{n}: {rows[-1]['capsules_per_s']:.1f} capsules/s; start-up {pool.startup_s:.1f} s; "
                      f"identical to 1 process: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(results.format_table(rows, ["mode", "startup_s", "compile_s", "capsules_per_s", "identical"]))
    for q, r in store.items():
        print(f"store (KV -> numpy -> {q} -> file, 1 thread): {r['capsules_per_s']:.0f} capsules/s, "
              f"{r['mb_per_s']:.0f} MB/s written, {r['kv_bytes_per_capsule'] / 1024:.1f} KiB/capsule")
    single = rows[0]
    est = estimate(store, single["capsules_per_s"], params, store["fp16"]["tokens_per_capsule"])
    print(f"\nCPU: {est['cpu_achieved_gflops']:.0f} GFLOP/s achieved (2·P·t, unpadded t); 10M capsules = "
          f"{est['cpu_core_hours']:,.0f} core-hours. Estimate for 10M capsules on N GPU workers (assumed TFLOP/s, "
          f"measured store rate {est['store_mb_per_s']:.0f} MB/s fp16 per core):")
    print(estimate_table(est))
    results.write(args.out, "compile", rows, vars(args) | {"num_capsules": len(caps)}, ray_init_s=ray_init_s,
                  store=store, model_parameters=params, load_average=os.getloadavg(), estimate=est)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
