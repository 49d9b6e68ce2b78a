"""``kvi ingest DOCS... --out DIR``: open ingestion of .txt / .md / .pdf / .jsonl documents, no entity list needed.

    kvi ingest corpus/ --out out/assets
    kvi ingest docs.jsonl --entities entities.jsonl --out out/assets       # a given list joins titles and NER
    kvi ingest docs.jsonl --llm Qwen/Qwen2.5-0.5B-Instruct --out out/assets   # plus triples from a frozen LLM
    kvi ingest docs.jsonl --ray --out out/assets          # spaCy analysis on Ray tasks, assembly on the driver

Writes ``sentences.jsonl`` (checksummed store), ``capsules.jsonl`` (triples, one sentence capsule per sentence),
``entities.jsonl`` and ``ingest.json`` (counts, timings and documented fallbacks such as a document with no
sentences), each atomically. ``kvi eval --assets DIR`` and ``kvi compile --capsules DIR/capsules.jsonl`` read them.
"""
from __future__ import annotations

import json
from pathlib import Path


def cmd_ingest(args) -> int:
    from kvi_engine.capsules.capsule import load_entities
    from kvi_engine.ingest.analysis import AnalysisOptions
    from kvi_engine.ingest.assets import build_open_assets, save_assets
    from kvi_engine.ingest.documents import load_documents
    from kvi_engine.ingest.nlp import load_pipeline
    from kvi_engine.utils.atomic import atomic_open

    if args.ray is not None:
        from kvi_engine.distributed.cluster import require_ray
        require_ray("kvi ingest --ray")  # before any work: without the extra, one line says which to install
    options = AnalysisOptions(pipeline=args.pipeline, max_document_chars=args.max_doc_chars)
    nlp = load_pipeline(options.pipeline)  # a missing pipeline fails before any document is read (here too with --ray)
    documents = load_documents(*args.docs)
    entities = load_entities(args.entities) if args.entities else []
    extractor = None
    if args.llm:
        from kvi_engine.ingest.llm import LLMExtractor
        from kvi_engine.models.loading import load_model
        model, tok, _ = load_model(args.llm, device=args.device)
        extractor = LLMExtractor(model, tok, entities=entities or None)
    if args.ray is None:
        assets = build_open_assets(documents, entities, options=options, templates=not args.no_templates,
                                   extractor=extractor, nlp=nlp, progress=True)
    else:
        from kvi_engine import distributed
        assets = distributed.build_open_assets(documents, entities, options=options, templates=not args.no_templates,
                                               extractor=extractor, shard_docs=args.shard_docs, address=args.ray)
    out = Path(args.out)
    paths = save_assets(assets, out)
    report = {"documents": [str(d) for d in args.docs], "stats": assets.stats, "notes": assets.notes,
              "rejections": len(assets.rejections), "pipeline": options.pipeline,
              "kinds": {k: sum(c.kind == k for c in assets.capsules) for k in ("triple", "sentence")}}
    with atomic_open(out / "ingest.json", "w") as f:
        json.dump(report, f, indent=1)
    st = assets.stats
    print(f"{st['documents']} documents -> {st['sentences']} sentences, {st['entities']} entities, "
          f"{report['kinds']['triple']} triples, {report['kinds']['sentence']} sentence capsules "
          f"({st['analyse_s'] + st['assemble_s']:.1f}s)")
    for note in assets.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}, {out / 'ingest.json'}")
    return 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("ingest", help="documents -> sentences, entities, triples and sentence capsules (no entity "
                                      "list needed)")
    p.add_argument("docs", nargs="+", help="documents: .txt / .md / .pdf / .jsonl {id, text, title?} files or folders")
    p.add_argument("--out", required=True, help="assets directory")
    p.add_argument("--entities", help="a given entity list (JSONL) that joins the titles and NER names")
    p.add_argument("--no-templates", action="store_true", help="skip the relation-template triples")
    p.add_argument("--llm", help="also extract triples with this frozen LLM (HF name or directory)")
    p.add_argument("--device", default="cpu", help="device of the --llm model")
    p.add_argument("--pipeline", default="en_core_web_sm", help="spaCy pipeline (default en_core_web_sm)")
    p.add_argument("--max-doc-chars", type=int, default=2_000_000,
                   help="a longer document is refused with its id (default 2,000,000 characters)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="analyse shards of documents on Ray tasks (pip install 'kvi-engine[ray]'): bare = a private "
                        "cluster on this machine, 'auto' = the cluster `ray start` made here, HOST:PORT = that "
                        "cluster; the same assets as without --ray")
    p.add_argument("--shard-docs", type=int, default=256, help="with --ray: documents per task (default 256)")
    p.set_defaults(func=cmd_ingest)
