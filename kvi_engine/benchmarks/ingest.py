"""Open ingestion throughput and memory: spaCy analysis (parser + NER + open triples) and the corpus-wide assembly
(entities, dictionary pass, capsules), one thread.

    kvi bench ingest                                   # each shared set, as it is
    kvi bench ingest --sets musique_ans_dev100 --docs 400
    kvi bench ingest --sets pubmedqa_pqal --scale-to 100000   # the set's documents repeated to 100K sentences

Sentences per second are given per CPU second of this process (the target's "per core": other jobs on a shared
machine stretch wall time, not CPU time) and per wall second; peak memory is the resident-set increase during the
run, sampled every millisecond. Writes ``bench/results/ingest.{json,csv}``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import PeakRSS
from kvi_engine.utils.paths import SHARED_SETS, shared_data_dir


def repeated(documents, sentences_wanted: int, sentences_have: int):
    """``documents`` repeated (ids suffixed ``-r<k>``) until about ``sentences_wanted`` sentences."""
    k = max(1, -(-sentences_wanted // max(sentences_have, 1)))
    return [d if r == 0 else replace(d, id=f"{d.id}-r{r}") for r in range(k) for d in documents], k


def measure(name: str, documents, progress: bool) -> dict:
    from kvi_engine.ingest.assets import build_open_assets

    with PeakRSS(interval=0.01) as mem:
        t, c = time.perf_counter(), time.process_time()
        a = build_open_assets(documents, progress=progress)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    st = a.stats
    return {"set": name, "documents": len(documents), "sentences": st["sentences"], "tokens": st["tokens"],
            "entities": st["entities"], "triples": st["triples"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "sentences_per_cpu_s": round(st["sentences"] / cpu, 1), "sentences_per_s": round(st["sentences"] / wall, 1),
            "tokens_per_cpu_s": round(st["tokens"] / cpu), "analyse_s": st["analyse_s"],
            "assemble_s": st["assemble_s"], "peak_rss_mib": round(mem.mib)}


def main(argv=None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kvi_engine.benchmarks.results import format_table
    from kvi_engine.ingest.documents import load_documents
    from kvi_engine.ingest.nlp import load_pipeline

    ap = argparse.ArgumentParser(prog="kvi bench ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SHARED_SETS))
    ap.add_argument("--docs", type=int, help="only the first N documents of each set")
    ap.add_argument("--scale-to", type=int, help="repeat each set's documents to about N sentences (instead)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=str(results.default_out("ingest")))
    args = ap.parse_args(argv)
    load_pipeline()  # loading spaCy (~2 s) is not ingestion
    rows = []
    for name in args.sets:
        docs = load_documents(shared_data_dir() / name / "docs.jsonl")[:args.docs]
        if args.scale_to:
            from kvi_engine.ingest.analysis import Analyzer
            probe = docs[:200]
            per_doc = sum(len(a.sentences) for a in Analyzer().analyse(probe)) / len(probe)
            docs, k = repeated(docs, args.scale_to, int(per_doc * len(docs)))
        rows.append(measure(name, docs, args.progress))
        print(format_table(rows[-1:], list(rows[-1])), flush=True)
    results.write(args.out, "ingest", rows, vars(args))
    return 0
