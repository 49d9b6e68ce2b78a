"""``kvi compile``: capsules (and entity anchors) compiled by a model into a new KV bank."""
from __future__ import annotations

from kvi_engine.cli.common import add_model_args, load_model_from


def cmd_compile(args) -> int:
    from kvi_engine.capsules.capsule import load_capsules, load_entities
    from kvi_engine.capsules.statements import load_templates
    from kvi_engine.compile.compiler import compile_bank
    caps = load_capsules(args.capsules)
    ents = load_entities(args.entities) if args.entities else []
    model, tok = load_model_from(args)
    bank = compile_bank(model, tok, caps, args.out, quant=args.quant, entities=ents,
                        templates=load_templates(args.templates), batch_size=args.batch_size)
    print(f"compiled {bank.num_capsules} capsules ({len(caps)} triples, {len(ents)} anchors), "
          f"{bank.num_tokens} tokens, {bank.kv_bytes / 2**20:.2f} MiB KV -> {args.out}")
    return 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("compile", help="compile capsules (JSONL) into a KV bank")
    p.add_argument("--capsules", required=True, help="capsules JSONL")
    p.add_argument("--entities", help="entities JSONL: one anchor capsule per entity")
    p.add_argument("--templates", help="JSON {relation: template} overriding statement templates")
    p.add_argument("--out", required=True, help="bank directory to write")
    p.add_argument("--quant", default="fp16", help="storage format (fp32, fp16, bf16, int8, int4, int2, fp8; "
                                                   "options as in int4:g64, int8:channel)")
    p.add_argument("--batch-size", type=int, default=32)
    add_model_args(p)
    p.set_defaults(func=cmd_compile)
