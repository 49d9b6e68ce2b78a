"""The one result schema of every benchmark: machine, commit, timestamp, command line, parameters, then rows.

    {"schema": "kvi-bench/1", "bench": "ttft", "machine": {cpu, cores, arch, gpu, python, torch, threads,
     kvi_engine, commit}, "commit": "8028e36", "timestamp": "2026-12-01T09:30:00Z", "command": "kvi bench ttft ...",
     "params": {...}, ...extra, "rows": [{...}, ...]}

written as ``<stem>.json`` beside ``<stem>.csv`` (one line per row, with the commit and timestamp on every line so
rows from several runs can be concatenated) and, where a plot helps, ``<stem>.png``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from kvi_engine.utils.atomic import atomic_open
from kvi_engine.utils.machine import machine_info

SCHEMA = "kvi-bench/1"
RESULTS_DIR = Path("bench") / "results"


def default_out(name: str) -> Path:
    """``bench/results/<name>`` under the working directory (a checkout keeps its results there)."""
    return RESULTS_DIR / name


def _row(r) -> dict:
    return asdict(r) if is_dataclass(r) else dict(r)


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("/kvi", "kvi")):
        argv[0] = "kvi"
    return shlex.join(argv)


def document(bench: str, rows: list, params: dict | None = None, **extra) -> dict:
    machine = machine_info()
    return {"schema": SCHEMA, "bench": bench, "machine": machine, "commit": machine["commit"],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command_line(),
            "params": params or {}, **extra, "rows": [_row(r) for r in rows]}


def write(stem: str | os.PathLike, bench: str, rows: list, params: dict | None = None, **extra) -> dict:
    """Write ``<stem>.json`` and ``<stem>.csv`` atomically; returns the document written."""
    doc = document(bench, rows, params, **extra)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(stem.with_suffix(".json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    if doc["rows"]:
        columns = list(dict.fromkeys(k for r in doc["rows"] for k in r)) + ["commit", "timestamp"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns, lineterminator="\n")
        w.writeheader()
        for r in doc["rows"]:
            w.writerow({**{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()},
                        "commit": doc["commit"], "timestamp": doc["timestamp"]})
        with atomic_open(stem.with_suffix(".csv"), "w") as f:
            f.write(buf.getvalue())
    return doc


def read(path: str | os.PathLike) -> dict:
    """A result document; raises ValueError for a file that is not in this schema."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a kvi-engine benchmark result ({SCHEMA})")
    return doc


def format_table(rows: list, columns: list[str]) -> str:
    """Right-aligned text table of ``columns`` of ``rows`` (dataclasses or dicts); floats with two decimals."""
    dicts = [_row(r) for r in rows]
    cells = [list(columns)] + [[f"{d[c]:.2f}" if isinstance(d[c], float) else str(d[c]) for c in columns]
                               for d in dicts]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
