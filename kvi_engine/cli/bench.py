"""``kvi bench <name> [options]``: the benchmarks, from a checkout or an installed wheel alike (their code lives in
:mod:`kvi_engine.benchmarks`; ``bench/bench_<name>.py`` are thin entry scripts). Options after the name go to the
benchmark itself (``kvi bench ttft --help``)."""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {  # name -> (module in kvi_engine.benchmarks, what it measures)
    "ttft": ("ttft", "time to first token: LLM vs RAG vs KVI"),
    "overhead": ("overhead", "TTFT, decode tokens/s, memory: LLM / RAG / KV Prefix / KVI over capsules and batch"),
    "attention": ("attention", "fused prefix attention (C++ / Triton) vs the unfused path, per bank format"),
    "graph": ("graph", "2-hop traversal and BFS: C++ core vs twin vs networkx vs igraph"),
    "linker": ("linker", "entity linking MB/s: C++ core vs twin vs pyahocorasick"),
    "bank-scale": ("bank_scale", "a 1M-capsule bank: open, fetch, resident memory, updates"),
    "bank-accuracy": ("bank_accuracy", "quantised banks vs fp16 on the test model families"),
    "kpr": ("kpr", "KPR end to end: build, train, knowledge update, recall@k"),
    "vllm": ("vllm", "vLLM with injected capsules vs statements as prompt text vs plain vLLM (vLLM's own env)"),
    "compile": ("compile", "compile capsules/s: 1 process vs Ray with 1, 2, ... workers; worker start-up apart"),
    "retrieval": ("retrieval", "evidence reaching the model (RAG vs KVI) and latency on the shared real QA sets"),
    "ingest": ("ingest", "open ingestion throughput (sentences/s, NER included) and memory, up to 100K sentences"),
    "serve": ("serve", "kvi serve under 1..64 concurrent clients: batched vs one-at-a-time (needs the serve extra)"),
    "fidelity": ("fidelity", "injected KV vs text on the reader: EM/F1 of LLM, RAG, KV Prefix, KVI over capsules"),
}


def cmd_bench(args) -> int:
    module = importlib.import_module(f"kvi_engine.benchmarks.{BENCHMARKS[args.bench][0]}")
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return module.main(rest) or 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (results in bench/results/: JSON + CSV with machine and commit)")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="NAME")
    for name, (_, help) in BENCHMARKS.items():
        b = bsub.add_parser(name, help=help, add_help=False)
        b.add_argument("rest", nargs=argparse.REMAINDER)
        b.set_defaults(func=cmd_bench)
