"""``kvi eval DATASET.jsonl``: build the knowledge from documents (never from the dataset), answer every question
with each method under one harness, and write the report (md/csv/json/png) plus every answer's trace.

    kvi eval kvi_engine/data/sample/questions.jsonl --model DIR --out out/eval
    kvi eval qa.jsonl --docs corpus/ --entities entities.jsonl --methods kvi,rag,llm --retriever kpr:models/kpr
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from kvi_engine.cli.common import add_model_args, load_model_from
from kvi_engine.utils.atomic import atomic_open

REFERENCE = "KVI"


def cmd_eval(args) -> int:
    import torch

    from kvi_engine.eval import evaluate, load_dataset, write_report
    from kvi_engine.eval.support import support_markdown, support_report
    from kvi_engine.ingest import save_assets
    from kvi_engine.ingest.assets import assets_from_documents, load_assets
    from kvi_engine.query.encoders import make_encoder
    from kvi_engine.query.knowledge import build_knowledge
    from kvi_engine.query.methods import parse_methods
    from kvi_engine.query.pipeline import QueryPipeline
    from kvi_engine.retrieval import RetrievalConfig
    from kvi_engine.utils.paths import sample_dir

    dataset = load_dataset(args.dataset)
    if args.limit:
        dataset = dataset[:args.limit]
    methods = parse_methods(args.methods)
    config = RetrievalConfig(max_hops=args.max_hops, top_k=args.top_k, budget_tokens=args.budget_tokens,
                             max_anchors=args.max_anchors)
    docs = args.docs or [sample_dir() / "docs.jsonl"]
    entities = args.entities or (None if args.docs else sample_dir() / "entities.jsonl")
    dataset_path = Path(args.dataset).resolve()
    if any(Path(d).resolve() == dataset_path for d in docs):
        raise ValueError(f"{args.dataset} is the QA dataset: it cannot also be a document source")
    out = Path(args.out)
    if args.assets:
        if args.docs or args.capsules or args.entities:
            raise ValueError("--assets replaces --docs/--entities/--capsules; give one or the other")
        assets = load_assets(args.assets)
    else:
        assets = assets_from_documents(docs, entities, args.capsules, progress=True)
    if not args.assets or Path(args.assets).resolve() != (out / "assets").resolve():
        save_assets(assets, out / "assets")
    encoder = make_encoder(args.retriever)
    model, tok = load_model_from(args)
    quant = args.quant or ("fp32" if next(model.parameters()).dtype == torch.float32 else "fp16")
    knowledge = build_knowledge(model, tok, assets.capsules, assets.entities, out / "banks", store=assets.store,
                                quant=quant)
    pipe = QueryPipeline(model, tok, knowledge, encoder=encoder, config=config)
    questions = [it.question for it in dataset]
    t0 = time.perf_counter()
    answers = pipe.compare(questions, methods, max_new_tokens=args.max_new_tokens, chat=args.chat,
                           batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    names = [m.name for m in methods]
    run_config = {
        "model": getattr(model.config, "_name_or_path", "") or args.model or "", "dtype": str(model.dtype),
        "bank_quant": quant, "retriever": args.retriever, "max_new_tokens": args.max_new_tokens, "chat": args.chat,
        "decoding": "greedy", "retrieval": asdict(config),
        "methods": {m.name: {"retrieval": m.retrieval, "prompt": m.prompt, "kv": m.kv, "description": m.description}
                    for m in methods},
        "documents": [str(args.assets)] if args.assets else [str(d) for d in docs], "capsules": len(assets.capsules), "entities": len(assets.entities),
        "sentences": len(assets.store), "seconds": round(seconds, 2)}
    report = evaluate(dataset, {n: [a.text for a in answers[n]] for n in names},
                      reference=REFERENCE if REFERENCE in names else None,
                      inputs={n: [a.question for a in answers[n]] for n in names},
                      dataset_name=Path(args.dataset).stem, n_resamples=args.resamples, config=run_config)
    report.support = support_report(dataset, {n: [a.trace.reached for a in answers[n]] for n in names},
                                    assets.store, assets.capsules)
    paths = write_report(report, out)
    if report.support["questions"]:
        with atomic_open(out / "support_recall.json", "w") as f:
            json.dump(report.support, f, indent=1)
        with open(paths["md"], "a", encoding="utf-8") as f:
            f.write(support_markdown(report.support))
    with open(out / "traces.jsonl", "w", encoding="utf-8") as f:
        for i, it in enumerate(dataset):
            row = {"id": it.id, "question": it.question, "answers": list(it.answers), "hops": it.hops, "type": it.type,
                   "methods": {n: answers[n][i].to_dict() for n in names}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(paths["md"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}, {out / 'traces.jsonl'} "
          f"({len(dataset)} questions x {len(names)} methods in {seconds:.1f}s)")
    return 0


def add_subparsers(sub) -> None:
    from kvi_engine.query.methods import METHODS

    p = sub.add_parser("eval", help="evaluate LLM / RAG / GraphRAG / KV Prefix / KVI (+ ablations) on a QA set")
    p.add_argument("dataset", help="QA JSONL: {id, question, answers[, hops, type, support, supporting, lang, "
                                   "context_doc_ids, ...]} per line")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated: llm, rag, graphrag, kv-prefix, kvi, kvi-no-graph, kvi-no-kv (default: all)")
    p.add_argument("--out", required=True, help="report directory (report.md/csv/json/png, traces.jsonl, assets/)")
    p.add_argument("--docs", nargs="+", help="documents (txt/md/jsonl files or directories; default: the sample)")
    p.add_argument("--entities", help="entities JSONL for linking and rule extraction (default with the sample); "
                                      "without it, --docs are ingested openly (spaCy: titles, NER, open triples)")
    p.add_argument("--capsules", help="ready-made capsules JSONL instead of rule extraction")
    p.add_argument("--assets", help="a saved assets directory (sentences/capsules/entities.jsonl) instead of --docs")
    p.add_argument("--retriever", default="minilm", help="minilm | kpr:DIR (dense retrieval and DRM embeddings)")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--budget-tokens", type=int, default=256)
    p.add_argument("--max-anchors", type=int, default=4)
    p.add_argument("--max-hops", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quant", help="bank storage (default: fp32 for fp32 models, else fp16)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap / permutation resamples")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)
