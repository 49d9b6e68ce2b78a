"""Reading JSONL input with errors that name the file and line -- the one reader every loader uses.

Input is bounded: a line longer than ``KVI_JSONL_MAX_LINE_BYTES`` (default 64 MiB) or nested deeper than
:data:`MAX_DEPTH` levels is an error naming its line, not an unbounded parse (a 100k-deep line would otherwise end
in a RecursionError traceback).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

MAX_DEPTH = 64


def max_line_bytes() -> int:
    return int(os.environ.get("KVI_JSONL_MAX_LINE_BYTES", 64 * 2**20))


def depth(obj) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, d + 1)
        stack.extend((child, d + 1) for child in node if isinstance(child, (dict, list)))
    return deepest


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file"
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line. A missing file raises FileNotFoundError; bytes that
    are not UTF-8, invalid JSON, a line that is not an object or exceeds the bounds raise ``error`` with
    ``"<path>:<line>: ..."``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    limit = max_line_bytes()
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(limit + 1)  # never more than the limit in memory, whatever the file holds
            if not raw:
                break
            lineno += 1
            if len(raw) > limit and not raw.endswith(b"\n"):  # the cap cut the line: it holds more than limit
                raise error(f"{path}:{lineno}: line longer than the limit of {limit:,} bytes "
                            "(KVI_JSONL_MAX_LINE_BYTES)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}:{lineno}: not UTF-8 (byte {e.start}: {e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise error(f"{path}:{lineno}: JSON nested deeper than {MAX_DEPTH} levels") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if depth(obj) > MAX_DEPTH:
                raise error(f"{path}:{lineno}: JSON nested deeper than {MAX_DEPTH} levels")
            yield lineno, obj
