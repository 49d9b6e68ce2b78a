"""``kvi train-reader``: train the reader from scratch (base stage: facts as text; ``--adapt-steps N``: then an
adapted checkpoint fine-tuned on block-diagonal capsules, in ``<out>-adapted``), with tqdm progress, a loss PNG and
a model card in each output directory.

    kvi train-reader --out out/reader --steps 800 [--adapt-steps 300] [--max-minutes 50]
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time


def cmd_train_reader(args) -> int:
    from kvi_engine.reader.card import write_card
    from kvi_engine.reader.train import train

    t0 = time.time()
    command = "kvi " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train-reader"] else ""

    def notes() -> str:  # the command and its wall time (tokenizer, every stage so far, evaluations, saves)
        return (f"Built by `{command}` in {(time.time() - t0) / 60:.1f} min wall time.\n" if command else "")

    base = copy.copy(args)
    base.stage = "base" if not args.init else args.stage
    info = train(base)
    write_card(base.out, [info], notes=notes())
    print(f"reader ({info['stage']}): {info['steps']} steps in {info['times']['train_s'] / 60:.1f} min -> {base.out}")
    if args.adapt_steps:
        ad = copy.copy(args)
        ad.stage, ad.init, ad.out, ad.steps = "adapt", base.out, f"{args.out}-adapted", args.adapt_steps
        ad.mix, ad.induction_steps, ad.plant = args.adapt_mix, 0, ""
        ad.grow_after, ad.plant_carrier = "", None  # the base already has them
        ad.lr, ad.nmax_start = args.adapt_lr, args.nmax  # a fine-tune: lower rate, every context size from the start
        info2 = train(ad)
        write_card(ad.out, [info, info2], notes=notes())
        print(f"adapted reader: {info2['steps']} steps in {info2['times']['train_s'] / 60:.1f} min -> {ad.out}")
    return 0


def add_subparsers(sub) -> None:
    from kvi_engine.reader.train import add_arguments

    p = sub.add_parser("train-reader", help="train the small reader LM from scratch (synthetic fact-reading QA)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--adapt-steps", type=int, default=0, help="then fine-tune on KVI capsules for this many steps")
    p.add_argument("--adapt-mix", default="kvi:0.6,rag:0.2,doc:0.2")
    p.add_argument("--adapt-lr", type=float, default=5e-4)
    p.set_defaults(func=cmd_train_reader)
