"""``kvi bank add | remove | recompile | compact | requantize | verify | inspect | accuracy``: a bank's life after
``kvi compile``. Each prints one summary line (or a table). The verbs were top-level before ``kvi bank`` existed;
``kvi inspect``, ``kvi verify`` ... still work for one release as hidden, deprecated aliases."""
from __future__ import annotations

import json
import sys
import time

from kvi_engine.cli.common import add_model_args, load_model_from, parse_ids


def cmd_inspect(args) -> int:
    from kvi_engine.bank.bank import KVBank
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
        live = set(bank.live_ids())
        for i in range(min(args.capsules, bank.num_capsules)):
            print(f"  [{i}] {bank.statement(i)}  ({len(bank.token_ids(i))} tokens)" if i in live else
                  f"  [{i}] (removed)")
    return 0


def cmd_verify(args) -> int:
    from kvi_engine.bank.bank import KVBank
    t0 = time.perf_counter()
    bank = KVBank.open(args.bank)
    opened = time.perf_counter() - t0
    bank.verify()
    files = bank.snapshot.files
    print(f"ok: {args.bank}: {len(files)} file(s), {sum(len(s.c.sections) for s in bank.segments)} segment "
          f"sections and the manifest match their checksums; {len(bank.live_ids())} live capsules, "
          f"{bank.num_tokens} tokens, storage {bank.quant} (open {opened * 1e3:.1f} ms, verify "
          f"{(time.perf_counter() - t0 - opened) * 1e3:.1f} ms)")
    return 0


def cmd_requantize(args) -> int:
    from kvi_engine.bank import updates
    r = updates.requantize(args.bank, args.quant)
    print(f"requantized {r['live_capsules']} capsules {r['from']} -> {r['to']}: {r['kv_bytes'] / 2**20:.3f} MiB KV")
    return 0


def cmd_compact(args) -> int:
    from kvi_engine.bank import updates
    r = updates.compact(args.bank)
    print(f"compacted {r['live_capsules']} live capsules: {r['bytes_before'] / 2**20:.3f} -> "
          f"{r['bytes_after'] / 2**20:.3f} MiB")
    return 0


def cmd_remove(args) -> int:
    from kvi_engine.bank import updates
    updates.remove(args.bank, args.ids)
    print(f"removed capsules {args.ids} (tombstoned; `kvi bank compact` reclaims their bytes)")
    return 0


def cmd_add(args) -> int:
    from kvi_engine.capsules.capsule import load_capsules, load_entities
    from kvi_engine.compile.compiler import add_capsules
    caps = load_capsules(args.capsules)
    ents = load_entities(args.entities) if args.entities else []
    model, tok = load_model_from(args)
    ids = add_capsules(args.bank, model, tok, caps, entities=ents, batch_size=args.batch_size)
    print(f"added {len(ids)} capsules as ids {ids[0]}..{ids[-1]}")
    return 0


def cmd_recompile(args) -> int:
    from kvi_engine.compile.compiler import recompile_entity
    model, tok = load_model_from(args)
    ids = recompile_entity(args.bank, model, tok, args.entity)
    print(f"re-compiled {len(ids)} capsules of {args.entity!r} under the same ids {ids}")
    return 0


def cmd_accuracy(args) -> int:
    from kvi_engine.capsules.capsule import load_capsules
    from kvi_engine.eval import coders
    from kvi_engine.eval.bank_accuracy import evaluate, format_table
    from kvi_engine.utils.jsonl import read_jsonl
    caps = load_capsules(args.capsules)
    prompts = []
    for lineno, obj in read_jsonl(args.questions, what="questions file"):
        if not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise ValueError(f"{args.questions}:{lineno}: needs a non-empty string 'question'")
        prompts.append(obj["question"])
    prompts = prompts[:args.prompts]
    model, tok = load_model_from(args)
    noise = [float(x) for x in args.noise.split(",")] if args.noise else []
    simulate = [c for c in args.simulate.split(",") if c]
    for c in simulate:
        coders.parse(c)  # a bad label fails before any model work
    rows = evaluate(model, tok, caps, prompts, args.schemes.split(","), capsules_per_prompt=args.per_prompt,
                    draws=args.draws, noise=noise, simulate=simulate)
    print(format_table(rows, f"{len(prompts)} prompts x {args.draws} draws x {args.per_prompt} capsules, "
                             "reference fp16"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _verbs(sub, *, hidden: bool) -> None:
    """Register every bank verb on ``sub``; ``hidden``: as deprecated top-level aliases, absent from --help."""
    def parser(name, help, func):
        kw = {} if hidden else {"help": help}
        p = sub.add_parser(name, description=help, **kw)
        p.set_defaults(func=_deprecated(name, func) if hidden else func)
        return p

    p = parser("inspect", "header, counts, bytes per token and sizes of a bank", cmd_inspect)
    p.add_argument("bank")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="check every section's checksum")
    p.add_argument("--capsules", type=int, default=0, metavar="N", help="list the first N capsule statements")

    p = parser("verify", "check every section of every bank file against its checksum", cmd_verify)
    p.add_argument("bank")

    p = parser("requantize", "re-encode a bank's KV: fp32/fp16/bf16/int8/int4/int2/fp8 (+ :gN, :channel)",
               cmd_requantize)
    p.add_argument("bank")
    p.add_argument("--quant", required=True, help="e.g. int8, int4, int4:g64, int8:channel, fp8")

    p = parser("compact", "rewrite live capsules into one segment, dropping removed/replaced bytes", cmd_compact)
    p.add_argument("bank")

    p = parser("remove", "remove capsules by id (tombstones; ids are never reused)", cmd_remove)
    p.add_argument("bank")
    p.add_argument("--ids", type=parse_ids, required=True, help="comma-separated capsule ids")

    p = parser("add", "compile capsules (JSONL) into a new segment of an existing bank", cmd_add)
    p.add_argument("bank")
    p.add_argument("--capsules", required=True)
    p.add_argument("--entities", help="entities JSONL: one anchor capsule per entity")
    p.add_argument("--batch-size", type=int, default=32)
    add_model_args(p)

    p = parser("recompile", "re-compile one entity's capsules (anchor and triples) under the same ids", cmd_recompile)
    p.add_argument("bank")
    p.add_argument("--entity", required=True)
    add_model_args(p)

    p = parser("accuracy", "bytes, attention error, KL and top-1 agreement of quantised banks vs fp16", cmd_accuracy)
    p.add_argument("--capsules", required=True)
    p.add_argument("--questions", required=True, help="JSONL with a 'question' per line (the prompts)")
    p.add_argument("--schemes", default="int8,int8:channel,fp8,int4,int4:channel,int4:g32,int2")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--per-prompt", type=int, default=4, help="capsules injected per prompt")
    p.add_argument("--draws", type=int, default=1, help="random capsule sets per prompt")
    p.add_argument("--noise", default="", help="comma-separated relative K/V errors of Gaussian noise-floor rows, "
                                                "e.g. 0.005,0.01,0.045")
    p.add_argument("--simulate", default="", help="comma-separated candidate coders simulated on the bank, e.g. "
                                                   "int4+hadamard,int4+rotate,int4+mean-scale")
    p.add_argument("--json", help="also write the rows as JSON here")
    add_model_args(p)


def _deprecated(name, func):
    def run(args) -> int:
        print(f"kvi {name}: deprecated, use `kvi bank {name}` (the top-level alias goes in the next release)",
              file=sys.stderr)
        return func(args)
    return run


def add_subparsers(sub) -> None:
    bank = sub.add_parser("bank", help="inspect, verify, update, requantize and judge a bank")
    _verbs(bank.add_subparsers(dest="bank_command", required=True, metavar="VERB"), hidden=False)
    _verbs(sub, hidden=True)


