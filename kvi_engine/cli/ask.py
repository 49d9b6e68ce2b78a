"""``kvi ask``: answer questions over a bank with the query pipeline (or explicit capsule ids), beside the plain
model."""
from __future__ import annotations

from kvi_engine.cli.common import add_model_args, load_model_from, parse_ids


def cmd_ask(args) -> int:
    from kvi_engine.bank.bank import KVBank
    from kvi_engine.capsules.capsule import load_entities
    from kvi_engine.generate.engine import KVIEngine
    from kvi_engine.query.pipeline import QueryPipeline
    from kvi_engine.query.prompts import qa_prompt
    from kvi_engine.retrieval import RetrievalConfig
    bank = KVBank.open(args.bank)
    model, tok = load_model_from(args)
    engine = KVIEngine(model, tok, bank)
    questions = args.question
    opts = dict(max_new_tokens=args.max_new_tokens, chat=args.chat)
    if args.capsules is not None:  # explicit ids: plain injection, no retrieval
        out = engine.generate([qa_prompt(q) for q in questions], [args.capsules] * len(questions), **opts)
        for q, text in zip(questions, out.texts):
            print(f"Q: {q}\n   capsules: {args.capsules}\n   KVI: {text.strip()}")
        return 0
    entities = load_entities(args.entities) if args.entities else ()
    pipe = QueryPipeline.from_engine(engine, entities, config=RetrievalConfig(top_k=args.top_k))
    kvi = pipe.answer(questions, "KVI", **opts)
    plain = None if args.no_compare else pipe.answer(questions, "LLM", **opts)
    for i, a in enumerate(kvi):
        t = a.trace
        print(f"Q: {a.question}")
        print(f"   entities: {', '.join(t.entities) or '-'}; intent: {', '.join(t.intent) or '-'}")
        if t.fallback:
            print(f"   note: {t.fallback}")
        print(f"   capsules: {t.injected}")
        scored = {x["capsule_id"]: x for x in t.triples}
        for c, statement in zip(t.injected, t.injected_statements):
            x = scored.get(c)
            print(f"     [{c}] {statement}" + (f"  (score {x['score']:.3f}, hop {x['hop']})" if x else "  (anchor)"))
        print(f"   KVI: {a.text or '(nothing grounded)'}" + (f"   [raw: {t.raw.strip()!r}]" if t.dropped else ""))
        if plain is not None:
            print(f"   LLM: {plain[i].text}")
    return 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("ask", help="answer questions with and without injected capsules")
    p.add_argument("--bank", required=True)
    p.add_argument("--question", "-q", action="append", required=True, help="repeat for a batch")
    p.add_argument("--capsules", type=parse_ids, help="comma-separated capsule ids (default: the query pipeline)")
    p.add_argument("--entities", help="entities JSONL (aliases for entity linking)")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--no-compare", action="store_true", help="skip the answer without injection")
    add_model_args(p)
    p.set_defaults(func=cmd_ask)
