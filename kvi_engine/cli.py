"""The ``kvi`` command line: compile, ask, inspect, demo, bench (and the sub-commands other components add).

Errors users can fix (missing files, malformed JSONL, a bank from another model, bad ids) print one clear line
and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"
# Components that contribute sub-commands: module path -> function registering them on the subparsers.
_EXTENSIONS = ("kvi_engine.bank_cli", "kvi_engine.kpr.cli", "kvi_engine.eval.cli")


def _user_errors():
    from kvi_engine.bank_format import BankFormatError
    from kvi_engine.capsules import CapsuleFormatError
    from kvi_engine.dispatch import BackendUnavailable
    from kvi_engine.fingerprint import FingerprintMismatch
    from kvi_engine.rope import UnsupportedRoPE
    # OSError: a named model or tokenizer that cannot be found or loaded.
    return (OSError, CapsuleFormatError, BankFormatError, FingerprintMismatch, UnsupportedRoPE,
            BackendUnavailable, IndexError, ValueError)


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"capsule ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("empty capsule id list")
    return ids


def _load(args):
    import torch

    from kvi_engine.models import load_model
    dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model, tok, _fallback = load_model(args.model, dtype=dtype, device=args.device)
    return model, tok


def cmd_compile(args) -> int:
    from kvi_engine import compile_bank, load_capsules, load_entities
    from kvi_engine.statements import load_templates
    caps = load_capsules(args.capsules)
    ents = load_entities(args.entities) if args.entities else []
    model, tok = _load(args)
    bank = compile_bank(model, tok, caps, args.out, quant=args.quant, entities=ents,
                        templates=load_templates(args.templates), batch_size=args.batch_size)
    print(f"compiled {bank.num_capsules} capsules ({len(caps)} triples, {len(ents)} anchors), "
          f"{bank.num_tokens} tokens, {bank.kv_bytes / 2**20:.2f} MiB KV -> {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from kvi_engine import KVBank
    bank = KVBank.open(args.bank, verify=args.verify)
    info = bank.describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    width = max(map(len, info))
    for k, v in info.items():
        if k == "sections":
            v = ", ".join(f"{n} {b / 2**20:.3f} MiB" for n, b in v.items())
        elif isinstance(v, float):
            v = f"{v:,.1f}"
        print(f"{k.ljust(width)}  {v}")
    if args.verify:
        print(f"{'verified'.ljust(width)}  every section matches its checksum")
    if args.capsules:
        for i in range(min(args.capsules, bank.num_capsules)):
            print(f"  [{i}] {bank.statement(i)}  ({len(bank.token_ids(i))} tokens)")
    return 0


def cmd_ask(args) -> int:
    from kvi_engine import KVBank, KVIEngine, load_entities
    from kvi_engine.pipeline import QueryPipeline
    from kvi_engine.retrieval import RetrievalConfig
    bank = KVBank.open(args.bank)
    model, tok = _load(args)
    engine = KVIEngine(model, tok, bank)
    questions = args.question
    opts = dict(max_new_tokens=args.max_new_tokens, chat=args.chat)
    if args.capsules is not None:  # explicit ids: plain injection, no retrieval
        from kvi_engine.prompts import qa_prompt
        out = engine.generate([qa_prompt(q) for q in questions], [args.capsules] * len(questions), **opts)
        for q, text in zip(questions, out.texts):
            print(f"Q: {q}\n   capsules: {args.capsules}\n   KVI: {text.strip()}")
        return 0
    entities = load_entities(args.entities) if args.entities else ()
    pipe = QueryPipeline.from_engine(engine, entities, config=RetrievalConfig(top_k=args.top_k))
    kvi = engine.answer(questions, "KVI", pipeline=pipe, **opts)
    plain = None if args.no_compare else engine.answer(questions, "LLM", pipeline=pipe, **opts)
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


def cmd_demo(args) -> int:
    from kvi_engine.demo import run_demo
    return run_demo(args)


def cmd_bench_ttft(args) -> int:
    return _bench_script("bench_ttft").main(_rest(args))


def cmd_bench_overhead(args) -> int:
    return _bench_script("bench_overhead").main(_rest(args))


def _rest(args) -> list[str]:
    return args.rest[1:] if args.rest[:1] == ["--"] else args.rest


def _bench_script(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        return importlib.import_module(name)
    except ImportError:
        raise FileNotFoundError(f"bench/{name}.py is not available (run from a source checkout)") from None


def _model_args(p):
    p.add_argument("--model", help="HF model name or local dir (default: Qwen/Qwen2.5-0.5B-Instruct; a tiny random "
                                   "model, announced loudly, when it cannot be loaded)")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kvi", description="Knowledge injection into HF language models (KVI, KPR)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile capsules (JSONL) into a KV bank")
    p.add_argument("--capsules", required=True, help="capsules JSONL")
    p.add_argument("--entities", help="entities JSONL: one anchor capsule per entity")
    p.add_argument("--templates", help="JSON {relation: template} overriding statement templates")
    p.add_argument("--out", required=True, help="bank directory to write")
    p.add_argument("--quant", default="fp16", help="storage format (fp32, fp16, bf16, ...)")
    p.add_argument("--batch-size", type=int, default=32)
    _model_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("ask", help="answer questions with and without injected capsules")
    p.add_argument("--bank", required=True)
    p.add_argument("--question", "-q", action="append", required=True, help="repeat for a batch")
    p.add_argument("--capsules", type=_parse_ids, help="comma-separated capsule ids (default: the query pipeline)")
    p.add_argument("--entities", help="entities JSONL (aliases for entity linking)")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--no-compare", action="store_true", help="skip the answer without injection")
    _model_args(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("inspect", help="header, counts, bytes per token and sizes of a bank")
    p.add_argument("bank")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="check every section's checksum")
    p.add_argument("--capsules", type=int, default=0, metavar="N", help="list the first N capsule statements")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="compile the sample capsules and answer sample questions with/without KVI")
    p.add_argument("--out", default="out/demo-bank")
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    _model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("ttft", help="time-to-first-token: LLM vs RAG vs KVI (bench/bench_ttft.py)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench_ttft)
    b = bsub.add_parser("overhead", help="TTFT, decode tokens/s, memory: LLM / RAG / KV Prefix / KVI "
                                         "(bench/bench_overhead.py)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench_overhead)

    for name in _EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # component not present in this build
            raise
        mod.add_subparsers(sub)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 2 and argv[0] == "bench" and argv[2] != "--":
        argv.insert(2, "--")  # bench scripts parse their own options; REMAINDER alone drops leading "--opts"
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"kvi {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
