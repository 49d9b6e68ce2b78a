"""``kvi demo``: the main job on the shipped sample (capsules, entities, questions).

Compiles the sample capsules with the default model (or ``--model``), answers sample questions in one batch with
and without injection (capsules chosen per question by the query pipeline's retrieval: entity linking, intent,
2-hop traversal, DRM scoring, budgeted top-k with anchors), and prints a timing table measured side by side: LLM
(no knowledge), RAG (the same statements as prompt text) and KVI (injected as KV).
"""
from __future__ import annotations

import time

from kvi_engine.cli.common import add_model_args, load_model_from
from kvi_engine.utils.paths import sample_dir


def cmd_demo(args) -> int:
    import torch

    from kvi_engine.benchmarks.results import format_table
    from kvi_engine.benchmarks.ttft import measure_ttft
    from kvi_engine.capsules.capsule import load_capsules, load_entities
    from kvi_engine.compile.compiler import compile_bank
    from kvi_engine.eval.dataset import load_dataset
    from kvi_engine.generate.engine import KVIEngine
    from kvi_engine.query.pipeline import QueryPipeline
    from kvi_engine.query.prompts import qa_prompt

    model, tok = load_model_from(args)
    caps = load_capsules(sample_dir() / "capsules.jsonl")
    ents = load_entities(sample_dir() / "entities.jsonl")
    t0 = time.perf_counter()
    bank = compile_bank(model, tok, caps, args.out, quant="fp16" if model.dtype != torch.float32 else "fp32",
                        entities=ents)
    compile_s = time.perf_counter() - t0
    print(f"\nbank: {bank.num_capsules} capsules ({len(caps)} triples + {len(ents)} anchors), {bank.num_tokens} "
          f"tokens, {bank.bytes_per_token / 1024:.1f} KiB/token, compiled in {compile_s:.1f}s -> {args.out}\n")

    questions = load_dataset(sample_dir() / "questions.jsonl")[:args.questions]
    engine = KVIEngine(model, tok, bank)
    found = QueryPipeline.from_engine(engine, ents).retrieve("graph", [q.question for q in questions])
    capsule_ids = [f.capsule_ids for f in found]
    prompts = [qa_prompt(q.question) for q in questions]
    kvi = engine.generate(prompts, capsule_ids, max_new_tokens=args.max_new_tokens)
    llm = engine.generate(prompts, None, max_new_tokens=args.max_new_tokens)
    for q, ids, a_kvi, a_llm in zip(questions, capsule_ids, kvi.texts, llm.texts):
        print(f"Q: {q.question}   (gold: {', '.join(q.answers)})")
        print(f"   injected: {len(ids)} capsules, first {bank.statement(ids[0]) if ids else '-'}")
        print(f"   LLM: {a_llm.strip()[:100]!r}")
        print(f"   KVI: {a_kvi.strip()[:100]!r}")

    # TTFT side by side on the first question with its capsules (batch of 1) and for the whole batch.
    first = next((i for i, ids in enumerate(capsule_ids) if ids), 0)
    prompt = tok(prompts[first]).input_ids
    rows = measure_ttft(model, bank, prompt, capsule_ids[first], repeats=args.repeats)
    print(f"\ntime to first token, question {questions[first].id}, {len(capsule_ids[first])} capsules "
          f"(median of {args.repeats}, {type(model).__name__}, {model.dtype}, {torch.get_num_threads()} threads):")
    print(format_table(rows, ["method", "capsules", "prompt_tokens", "knowledge_tokens", "ttft_ms", "ttft_ms_min",
                              "ratio_to_llm", "ratio_paired"]))
    print(f"\nbatched generation of {len(prompts)} questions x {args.max_new_tokens} tokens: "
          f"KVI {kvi.total_s:.2f}s, LLM {llm.total_s:.2f}s")
    return 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("demo", help="compile the sample capsules and answer sample questions with/without KVI")
    p.add_argument("--out", default="out/demo-bank")
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    add_model_args(p)
    p.set_defaults(func=cmd_demo)
