"""``kvi compile``: capsules (and entity anchors) compiled by a model into a new KV bank, in this process or, with
``--ray [ADDRESS]``, by workers of a Ray cluster (one model replica each) into the same bank."""
from __future__ import annotations

import functools
import sys

from kvi_engine.cli.common import add_model_args, load_model_from
from kvi_engine.compile.compiler import DEFAULT_SHARD_SIZE


def cmd_compile(args) -> int:
    from kvi_engine.capsules.capsule import load_capsules, load_entities
    from kvi_engine.capsules.statements import load_templates
    from kvi_engine.compile.compiler import compile_bank
    if args.ray is not None:
        from kvi_engine.distributed.cluster import require_ray
        require_ray("kvi compile --ray")  # before any work: without the extra, one line says which to install
    caps = load_capsules(args.capsules)
    ents = load_entities(args.entities) if args.entities else []
    templates = load_templates(args.templates)
    kw = dict(quant=args.quant, entities=ents, templates=templates, batch_size=args.batch_size,
              shard_size=args.shard_size)
    if args.ray is None:
        args.device = args.device or "cpu"
        model, tok = load_model_from(args)
        bank = compile_bank(model, tok, caps, args.out, **kw)
        how = ""
    else:
        from kvi_engine.distributed import compile_bank as compile_on_ray
        from kvi_engine.distributed import load_replica
        run = compile_on_ray(functools.partial(load_replica, args.model, args.dtype, args.device or "auto"), caps,
                             args.out, address=args.ray, num_workers=args.workers, **kw)
        if any(w["fell_back"] for w in run.workers):
            print(f"kvi compile: warning: the workers could not load {args.model or 'the default model'} and fell "
                  "back to a tiny RANDOM model (see --model)", file=sys.stderr)
        bank = run.bank
        how = (f" by {run.num_workers} Ray worker{'s' * (run.num_workers != 1)} in {run.num_shards} shards "
               f"({run.capsules_per_s:.1f} capsules/s; worker start-up {run.startup_s:.1f} s)")
    print(f"compiled {bank.num_capsules} capsules ({len(caps)} triples, {len(ents)} anchors), "
          f"{bank.num_tokens} tokens, {bank.kv_bytes / 2**20:.2f} MiB KV -> {args.out}{how}")
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
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help="capsules per shard: blocks compiled (and length-sorted) alone; with --ray, one task each. "
                        "The same value gives the same bank bits with or without --ray, on any number of workers")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="compile on Ray (pip install 'kvi-engine[ray]'): bare = a private cluster on this machine, "
                        "'auto' = the cluster `ray start` made here, HOST:PORT = that cluster; the bank directory "
                        "must be visible to every worker")
    p.add_argument("--workers", type=int, help="with --ray: compile workers, one model replica each (default: one "
                                               "per GPU of the cluster, else one per CPU)")
    add_model_args(p)
    p.set_defaults(func=cmd_compile, device=None)
