"""The ``kvi`` command line. Verb groups, each in its own module: ingest, compile, ask, demo, eval, bank, kpr, bench,
serve, train-reader.

Errors users can fix (missing files, malformed JSONL, a bank from another model, bad ids) print one clear line
and exit with status 2 (``KVI_DEBUG=1`` prints the traceback too); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from kvi_engine.cli import ask, bank, bench, compile, demo, eval, ingest, kpr, reader, serve
from kvi_engine.cli.common import message, user_errors

GROUPS = (ingest, compile, ask, demo, eval, bank, kpr, bench, serve, reader)
VISIBLE = "{ingest,compile,ask,demo,eval,bank,kpr,bench,serve,train-reader}"


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
    verb = " ".join(str(v) for v in (args.command, getattr(args, "bank_command", None) or "") if v)
    show = warnings.showwarning

    def one_line(msg, category, filename, lineno, file=None, line=None):
        # the engine's own warnings (an update committed with leftovers, a skipped plot) as one line each; every
        # other warning as Python would show it, under the user's filters
        if issubclass(category, UserWarning) and category.__module__.startswith("kvi_engine"):
            print(f"kvi {verb}: warning: {msg}", file=sys.stderr)
        else:
            show(msg, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        return args.func(args)
    except user_errors() as e:
        if os.environ.get("KVI_DEBUG"):
            traceback.print_exc()
        print(f"kvi {verb}: error: {message(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
