"""The ``kvi`` command line. Verb groups, each in its own module: compile, ask, demo, eval, bank, kpr, bench.

Errors users can fix (missing files, malformed JSONL, a bank from another model, bad ids) print one clear line
and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from kvi_engine.cli import ask, bank, bench, compile, demo, eval, kpr
from kvi_engine.cli.common import message, user_errors

GROUPS = (compile, ask, demo, eval, bank, kpr, bench)
VISIBLE = "{compile,ask,demo,eval,bank,kpr,bench}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kvi", description="Knowledge injection into HF language models (KVI, KPR)")
    sub = ap.add_subparsers(dest="command", required=True, metavar=VISIBLE)
    for group in GROUPS:
        group.add_subparsers(sub)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 2 and argv[0] == "bench" and argv[2] != "--":
        argv.insert(2, "--")  # benchmarks parse their own options; REMAINDER alone drops leading "--opts"
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            return args.func(args)
        except user_errors() as e:
            print(f"kvi {args.command}: error: {message(e)}", file=sys.stderr)
            return 2
        finally:  # one line each, after the command's own output (e.g. an update committed with leftovers)
            for w in caught:
                if issubclass(w.category, UserWarning) and w.category.__module__.startswith("kvi_engine"):
                    print(f"kvi {args.command}: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


if __name__ == "__main__":
    sys.exit(main())
