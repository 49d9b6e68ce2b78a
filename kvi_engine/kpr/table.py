"""The entity table: one fp16 vector per entity, memory-mapped, plus its vocabulary (names and fingerprints).

Files in a KPR model directory:
  entity_vocab.jsonl  line 1: header {"format": "kpr-entity-vocab", "version": 1, "num_entities", "dim", "norm",
                      "source", "encoder"}; then one {"name", "fingerprint"} per row, in row order.
  entity_table.npy    float16 [num_entities, dim], opened with mmap: lookups touch only the rows they read.
  entity_linker.bin   the entity linker (kvi_engine.graph.linker) over names and aliases; its entity ids are table rows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvi_engine.utils.atomic import atomic_open

VOCAB_FILE = "entity_vocab.jsonl"
TABLE_FILE = "entity_table.npy"
LINKER_FILE = "entity_linker.bin"
VOCAB_FORMAT = "kpr-entity-vocab"
VOCAB_VERSION = 1


class EntityTableError(ValueError):
    """A table and its vocabulary (or the model using them) disagree; the message names the file."""


@dataclass(frozen=True, slots=True)
class TableMeta:
    dim: int
    norm: float
    source: str
    encoder: str


def write_vocab(path: str | os.PathLike, names: list[str], fingerprints: list[str], meta: TableMeta) -> None:
    if len(names) != len(fingerprints):
        raise ValueError(f"{len(names)} names but {len(fingerprints)} fingerprints")
    header = {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "num_entities": len(names), "dim": meta.dim,
              "norm": meta.norm, "source": meta.source, "encoder": meta.encoder}
    with atomic_open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for n, fp in zip(names, fingerprints):
            f.write(json.dumps({"name": n, "fingerprint": fp}, ensure_ascii=False) + "\n")


def read_vocab(path: str | os.PathLike) -> tuple[list[str], list[str], TableMeta]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: entity vocabulary missing")
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline() or "null")
        if not isinstance(header, dict) or header.get("format") != VOCAB_FORMAT:
            raise EntityTableError(f"{path}:1: not a {VOCAB_FORMAT} header")
        if header.get("version") != VOCAB_VERSION:
            raise EntityTableError(f"{path}:1: version {header.get('version')} unsupported (expected {VOCAB_VERSION})")
        names, fps = [], []
        for lineno, line in enumerate(f, 2):
            try:
                row = json.loads(line)
                names.append(str(row["name"]))
                fps.append(str(row["fingerprint"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EntityTableError(f"{path}:{lineno}: malformed vocabulary row ({type(e).__name__}: {e})") from None
    if len(names) != header["num_entities"]:
        raise EntityTableError(f"{path}: header says {header['num_entities']} entities, file has {len(names)}")
    meta = TableMeta(int(header["dim"]), float(header["norm"]), str(header["source"]), str(header["encoder"]))
    return names, fps, meta


class EntityTable:
    """Read-only view of a directory's entity table; ``lookup`` gathers rows as float32."""

    def __init__(self, vectors: np.ndarray, names: list[str], fingerprints: list[str], meta: TableMeta):
        self.vectors, self.names, self.fingerprints, self.meta = vectors, names, fingerprints, meta
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "EntityTable":
        directory = Path(directory)
        names, fps, meta = read_vocab(directory / VOCAB_FILE)
        tpath = directory / TABLE_FILE
        if not tpath.is_file():
            raise FileNotFoundError(f"{tpath}: entity table missing")
        vectors = np.load(tpath, mmap_mode="r")
        if vectors.ndim != 2 or vectors.dtype != np.float16:
            raise EntityTableError(f"{tpath}: expected a 2-D float16 array, got {vectors.dtype} {vectors.shape}")
        if vectors.shape != (len(names), meta.dim):
            raise EntityTableError(f"{tpath}: shape {vectors.shape} does not match the vocabulary "
                                   f"{directory / VOCAB_FILE} ({len(names)} entities, dim {meta.dim})")
        return cls(vectors, names, fps, meta)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.meta.dim

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any shape, int) -> float32 [*ids.shape, dim]; only the distinct rows are read."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise EntityTableError(f"entity id out of range [0, {len(self)}): {ids.min()}..{ids.max()}")
        uniq, inv = np.unique(ids.reshape(-1), return_inverse=True)
        rows = np.asarray(self.vectors[uniq], dtype=np.float32)
        return rows[inv].reshape(*ids.shape, self.dim)
