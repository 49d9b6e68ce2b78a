"""Bank sub-commands of ``kvi``: verify, requantize, compact, remove, add, recompile, accuracy.

Registered by :func:`add_subparsers` (the main ``kvi`` parser calls it); ``python -m kvi_engine.bank_cli`` runs them
standalone. Each command prints one summary line (or a table) and returns an exit status.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from kvi_engine.cli import _parse_ids


def cmd_verify(args) -> int:
    from kvi_engine.bank import KVBank
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
    from kvi_engine import bank_updates
    r = bank_updates.requantize(args.bank, args.quant)
    print(f"requantized {r['live_capsules']} capsules {r['from']} -> {r['to']}: {r['kv_bytes'] / 2**20:.3f} MiB KV")
    return 0


def cmd_compact(args) -> int:
    from kvi_engine import bank_updates
    r = bank_updates.compact(args.bank)
    print(f"compacted {r['live_capsules']} live capsules: {r['bytes_before'] / 2**20:.3f} -> "
          f"{r['bytes_after'] / 2**20:.3f} MiB")
    return 0


def cmd_remove(args) -> int:
    from kvi_engine import bank_updates
    bank_updates.remove(args.bank, args.ids)
    print(f"removed capsules {args.ids} (tombstoned; `kvi compact` reclaims their bytes)")
    return 0


def _model(args):
    from kvi_engine import cli
    return cli._load(args)


def cmd_add(args) -> int:
    from kvi_engine.capsules import load_capsules, load_entities
    from kvi_engine.compile import add_capsules
    caps = load_capsules(args.capsules)
    ents = load_entities(args.entities) if args.entities else []
    model, tok = _model(args)
    ids = add_capsules(args.bank, model, tok, caps, entities=ents, batch_size=args.batch_size)
    print(f"added {len(ids)} capsules as ids {ids[0]}..{ids[-1]}")
    return 0


def cmd_recompile(args) -> int:
    from kvi_engine.compile import recompile_entity
    model, tok = _model(args)
    ids = recompile_entity(args.bank, model, tok, args.entity)
    print(f"re-compiled {len(ids)} capsules of {args.entity!r} under the same ids {ids}")
    return 0


def cmd_accuracy(args) -> int:
    from kvi_engine.bank_accuracy import evaluate, format_table
    from kvi_engine.capsules import load_capsules
    caps = load_capsules(args.capsules)
    with open(args.questions) as f:
        prompts = [json.loads(line)["question"] for line in f if line.strip()][:args.prompts]
    model, tok = _model(args)
    noise = [float(x) for x in args.noise.split(",")] if args.noise else []
    rows = evaluate(model, tok, caps, prompts, args.schemes.split(","), capsules_per_prompt=args.per_prompt,
                    draws=args.draws, noise=noise)
    print(format_table(rows, f"{len(prompts)} prompts x {args.draws} draws x {args.per_prompt} capsules, "
                             "reference fp16"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def add_subparsers(sub, model_args=None) -> None:
    """Register the bank sub-commands on ``sub`` (an argparse subparsers object)."""
    if model_args is None:
        from kvi_engine.cli import _model_args as model_args
    p = sub.add_parser("verify", help="check every section of every bank file against its checksum")
    p.add_argument("bank")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("requantize", help="re-encode a bank's KV: fp32/fp16/bf16/int8/int4/int2/fp8 (+ :gN, :channel)")
    p.add_argument("bank")
    p.add_argument("--quant", required=True, help="e.g. int8, int4, int4:g64, int8:channel, fp8")
    p.set_defaults(func=cmd_requantize)

    p = sub.add_parser("compact", help="rewrite live capsules into one segment, dropping removed/replaced bytes")
    p.add_argument("bank")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("remove", help="remove capsules by id (tombstones; ids are never reused)")
    p.add_argument("bank")
    p.add_argument("--ids", type=_parse_ids, required=True, help="comma-separated capsule ids")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("add", help="compile capsules (JSONL) into a new segment of an existing bank")
    p.add_argument("bank")
    p.add_argument("--capsules", required=True)
    p.add_argument("--entities", help="entities JSONL: one anchor capsule per entity")
    p.add_argument("--batch-size", type=int, default=32)
    model_args(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("recompile", help="re-compile one entity's capsules (anchor and triples) under the same ids")
    p.add_argument("bank")
    p.add_argument("--entity", required=True)
    model_args(p)
    p.set_defaults(func=cmd_recompile)

    p = sub.add_parser("accuracy", help="bytes, attention error, KL and top-1 agreement of quantised banks vs fp16")
    p.add_argument("--capsules", required=True)
    p.add_argument("--questions", required=True, help="JSONL with a 'question' per line (the prompts)")
    p.add_argument("--schemes", default="int8,int8:channel,fp8,int4,int4:channel,int4:g32,int2")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--per-prompt", type=int, default=4, help="capsules injected per prompt")
    p.add_argument("--draws", type=int, default=1, help="random capsule sets per prompt")
    p.add_argument("--noise", default="", help="comma-separated relative K/V errors of Gaussian noise-floor rows, "
                                                "e.g. 0.005,0.01,0.045")
    p.add_argument("--json", help="also write the rows as JSON here")
    model_args(p)
    p.set_defaults(func=cmd_accuracy)


def _standalone_model_args(p) -> None:
    p.add_argument("--model", help="local HF model path (default: a tiny random model, said on stderr)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")


def main(argv=None) -> int:
    from kvi_engine.bank_format import BankFormatError
    from kvi_engine.fingerprint import FingerprintMismatch
    ap = argparse.ArgumentParser(prog="python -m kvi_engine.bank_cli")
    add_subparsers(ap.add_subparsers(dest="command", required=True), _standalone_model_args)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (BankFormatError, FingerprintMismatch, FileNotFoundError, KeyError, IndexError, ValueError) as e:
        print(f"kvi {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
