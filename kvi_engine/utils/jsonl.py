"""Reading JSONL input with errors that name the file and line -- the one reader every loader uses."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file"
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line. A missing file raises FileNotFoundError; invalid
    JSON or a line that is not an object raises ``error`` with ``"<path>:<line>: ..."``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
