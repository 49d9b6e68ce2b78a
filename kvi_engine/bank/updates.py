"""Atomic bank updates: add capsules (a new segment), remove (tombstones), replace (re-compiled KV under the same
ids), compact and requantize. Torch-free: model-level entry points live in :mod:`kvi_engine.compile.compiler`.

Every update takes the bank's writer lock, writes new segment files under fresh names, fsyncs them, then renames a
new ``MANIFEST.kvb`` over the old one (write, fsync, rename, fsync the directory). A crash before the rename leaves
the old state plus an orphan file that the next update deletes; after it, the new state. Capsule ids are never
reused: removed ids stay tombstones, compaction keeps every live id.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from kvi_engine.bank.codec import decode_tokens
from kvi_engine.bank.segments import (
    BANK_VERSION,
    FIRST_SEGMENT,
    MANIFEST_FILE,
    Segment,
    SegmentWriter,
    Snapshot,
    new_segment_name,
    section_layout,
)
from kvi_engine.bank.spec import QuantSpec, capsule_axis, kv_sections
from kvi_engine.formats.container import ContainerWriter

LOCK_FILE = "LOCK"
_SEGMENT_HEADER_KEYS = ("engine_version", "fingerprint", "rope")


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if the writer dies
        yield
    finally:
        os.close(fd)


class Update:
    """One update transaction: ``with Update(root) as u: w = u.writer(...); ...; u.commit(...)``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such bank directory")

    def __enter__(self) -> "Update":
        self._lock = writer_lock(self.root)
        self._lock.__enter__()
        try:
            self.snap = Snapshot.open(self.root)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self.generation = self.snap.generation + 1
        self.seg, self.row = (a.copy() for a in self.snap.locations)
        self._writers: list[SegmentWriter] = []
        return self

    def __exit__(self, *exc) -> None:
        for w in self._writers:
            if w.out:
                w.abort()
        self._lock.__exit__(*exc)

    def writer(self, lengths, token_ids, meta: list[dict], capsule_ids, *, spec: QuantSpec | None = None,
               prefix: tuple[np.ndarray, np.ndarray] | None = None) -> SegmentWriter:
        first = self.snap.first
        h = first.c.header
        if prefix is None:
            prefix = (first.c.array("prefix_k"), first.c.array("prefix_v"))
            if first.spec.scheme == "bf16":
                prefix = tuple(_bf16_to_f32(p) for p in prefix)
        w = SegmentWriter(self.root / new_segment_name(self.generation), spec or first.spec,
                          num_layers=first.num_layers, num_kv_heads=first.num_kv_heads, head_dim=first.head_dim,
                          lengths=lengths, token_ids=token_ids, meta=meta, capsule_ids=capsule_ids,
                          prefix_token_ids=[int(t) for t in h["prefix_token_ids"]], prefix_k=prefix[0],
                          prefix_v=prefix[1], header={k: h[k] for k in _SEGMENT_HEADER_KEYS if k in h})
        self._writers.append(w)
        return w

    def next_ids(self, n: int) -> np.ndarray:
        return np.arange(len(self.seg), len(self.seg) + n, dtype=np.int64)

    def commit(self, segments: list[Segment], seg: np.ndarray, row: np.ndarray) -> Snapshot:
        """Rename the manifest of the new state into place, then delete files no state refers to."""
        write_manifest(self.root, self.generation, segments, seg, row)
        collect_garbage(self.root, {s.path.name for s in segments})
        return Snapshot.open(self.root)


def write_manifest(root: Path, generation: int, segments: list[Segment], seg: np.ndarray, row: np.ndarray) -> None:
    """Write, fsync and rename ``MANIFEST.kvb`` naming ``segments`` and mapping capsule ids to (segment, row)."""
    w = ContainerWriter(root / MANIFEST_FILE, "kvi-manifest", BANK_VERSION)
    try:
        w.add("capsule_segment", seg.astype(np.int32))
        w.add("capsule_row", row.astype(np.int32))
        w.close({"generation": generation, "num_capsules": len(seg),
                 "updated_unix": time.time(),
                 "segments": [{"file": s.path.name, "segment_id": s.segment_id, "num_capsules": s.num_capsules,
                               "num_tokens": s.num_tokens} for s in segments]})
    except BaseException:
        w.abort()
        raise


class CommittedWithLeftovers(UserWarning):
    """An update was committed, but stale files it no longer needs could not be removed (they are harmless: no
    manifest names them, and the next update tries again)."""


def collect_garbage(root: Path, keep: set[str]) -> list[str]:
    """Delete segment files and writer temp files that the current manifest does not name (call under the lock).
    Readers that mapped a deleted file keep their snapshot: the kernel frees it when they unmap. Runs after the
    commit, so it never fails the update: what it cannot delete (a directory of a segment's name, a permission
    error) is reported as a :class:`CommittedWithLeftovers` warning."""
    gone, left = [], []
    for p in root.iterdir():
        n = p.name
        stale_tmp = n.startswith((".seg-", f".{MANIFEST_FILE}.tmp-"))
        if (n.startswith("seg-") and n.endswith(".kvb") and n not in keep) or stale_tmp or \
                (n == FIRST_SEGMENT and n not in keep):
            if p.is_dir() and not p.is_symlink():
                left.append(f"{n} (a directory)")
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                left.append(f"{n} ({e.strerror or e})")
                continue
            gone.append(n)
    if left:
        warnings.warn(f"{root}: update committed; could not remove stale {', '.join(left)}",
                      CommittedWithLeftovers, stacklevel=2)
    return gone


def _bf16_to_f32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)


def _check_live(u: Update, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("no capsule ids given")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"capsule ids repeat: {ids.tolist()}")
    bad = ids[(ids < 0) | (ids >= len(u.seg))]
    if bad.size:
        raise IndexError(f"capsule ids {bad.tolist()} out of range (bank ids 0..{len(u.seg) - 1})")
    dead = ids[u.seg[ids] < 0]
    if dead.size:
        raise KeyError(f"capsules {dead.tolist()} were already removed")
    return ids


def _write_kv(w: SegmentWriter, k: np.ndarray, v: np.ndarray) -> None:
    """``k``/``v`` float ``[L, T, H, D]`` for all of the writer's capsules in row order."""
    rows = np.arange(w.C)
    for layer in range(w.L):
        w.put(layer, rows, k[layer], v[layer])


def add_kv(root, meta: list[dict], token_ids: Sequence[Sequence[int]], k: np.ndarray, v: np.ndarray) -> list[int]:
    """Add capsules with precomputed position-free KV ``[L, T, H, D]`` (tokens of all capsules back to back) as a
    new segment; returns their new ids."""
    with Update(root) as u:
        ids = u.next_ids(len(meta))
        w = u.writer([len(t) for t in token_ids], np.concatenate([np.asarray(t, np.int32) for t in token_ids]),
                     meta, ids)
        _write_kv(w, k, v)
        new = w.close()
        u.commit(u.snap.segments + [new], np.concatenate([u.seg, np.full(len(ids), len(u.snap.segments))]),
                 np.concatenate([u.row, np.arange(len(ids))]))
        return ids.tolist()


def replace_kv(root, ids, meta: list[dict], token_ids: Sequence[Sequence[int]], k: np.ndarray,
               v: np.ndarray) -> None:
    """Give live capsules ``ids`` new content and KV (a re-compile) under the same ids."""
    with Update(root) as u:
        ids = _check_live(u, ids)
        w = u.writer([len(t) for t in token_ids], np.concatenate([np.asarray(t, np.int32) for t in token_ids]),
                     meta, ids)
        _write_kv(w, k, v)
        new = w.close()
        u.seg[ids], u.row[ids] = len(u.snap.segments), np.arange(len(ids))
        u.commit(u.snap.segments + [new], u.seg, u.row)


def remove(root, ids) -> None:
    """Tombstone capsules ``ids``: they vanish from the bank at once; their bytes go at the next compaction."""
    with Update(root) as u:
        ids = _check_live(u, ids)
        u.seg[ids] = -1
        u.row[ids] = -1
        u.commit(u.snap.segments, u.seg, u.row)


def _live_tables(snap: Snapshot, live: np.ndarray):
    seg, row = snap.locations
    lengths = np.zeros(len(live), np.int64)
    token_ids, meta = [], []
    for j, i in enumerate(live):
        s, r = snap.segments[seg[i]], row[i]
        start, n = s.table[r]
        lengths[j] = n
        token_ids.append(s.token_ids[start:start + n])
        meta.append(s.meta[r])
    return lengths, (np.concatenate(token_ids) if token_ids else np.zeros(0, np.int32)), meta


def _token_sources(snap: Snapshot, live: np.ndarray):
    """Per source segment: (destination token positions, local source tokens, destination rows, source rows)."""
    seg, row = snap.locations
    out = []
    dst_start = 0
    per_tok = []
    for j, i in enumerate(live):
        s = int(seg[i])
        start, n = snap.segments[s].table[row[i]]
        per_tok.append((s, np.arange(start, start + n), np.arange(dst_start, dst_start + n), j, int(row[i])))
        dst_start += int(n)
    for s in range(len(snap.segments)):
        mine = [p for p in per_tok if p[0] == s]
        if mine:
            out.append((s, np.concatenate([p[2] for p in mine]), np.concatenate([p[1] for p in mine]),
                        np.array([p[3] for p in mine]), np.array([p[4] for p in mine])))
    return out


def compact(root) -> dict:
    """Rewrite the live capsules into one segment (bytes copied, never re-encoded) and drop everything else."""
    with Update(root) as u:
        live = u.snap.live_ids()
        if live.size == 0:
            raise ValueError(f"{root}: every capsule was removed; nothing to compact into a segment")
        lengths, token_ids, meta = _live_tables(u.snap, live)
        w = u.writer(lengths, token_ids, meta, live)
        first = u.snap.first
        layout = section_layout(first.spec, w.L, w.T, w.C, w.H, w.D)
        sources = _token_sources(u.snap, live)
        for name, (_, shape) in layout.items():
            for layer in range(w.L):
                buf = np.empty(shape[1:], w.out[name].dtype)
                for s, dst, src, drow, srow in sources:
                    arr = u.snap.segments[s].c.array(name)[layer]
                    if capsule_axis(first.spec, name):
                        buf[drow] = arr[srow]
                    else:
                        buf[dst] = arr[src]
                w.put_raw(name, layer, buf)
        new = w.close()
        before = sum(f.stat().st_size for f in u.snap.files)
        seg = np.where(u.seg >= 0, 0, -1)
        row = np.full(len(u.seg), -1, np.int64)
        row[live] = np.arange(len(live))
        snap = u.commit([new], seg, row)
        return {"live_capsules": int(len(live)), "bytes_before": before,
                "bytes_after": sum(f.stat().st_size for f in snap.files)}


def requantize(root, quant: str | dict | QuantSpec, *, transform=None) -> dict:
    """Re-encode every live capsule into ``quant`` (one new segment; dequantised to fp32 on the way).
    ``transform(layer, k, v) -> (k, v)``, if given, edits the float32 KV ``[T, H, D]`` (live tokens in id order)
    of each layer before it is encoded (the accuracy bench perturbs banks with it)."""
    spec = QuantSpec.parse(quant)
    with Update(root) as u:
        live = u.snap.live_ids()
        if live.size == 0:
            raise ValueError(f"{root}: every capsule was removed; nothing to requantize")
        spec.header(u.snap.first.head_dim)  # validates group size against head_dim before writing anything
        lengths, token_ids, meta = _live_tables(u.snap, live)
        first = u.snap.first
        prefix = tuple(_float(first, first.c.array(n)) for n in ("prefix_k", "prefix_v"))
        w = u.writer(lengths, token_ids, meta, live, spec=spec, prefix=prefix)
        sources = _token_sources(u.snap, live)
        rows = np.arange(w.C)
        for layer in range(w.L):
            k = np.empty((w.T, w.H, w.D), np.float32)
            v = np.empty_like(k)
            for s, dst, src, _, _ in sources:
                k[dst], v[dst] = layer_float(u.snap.segments[s], layer, src)
            if transform is not None:
                k, v = transform(layer, k, v)
            w.put(layer, rows, k, v)
        new = w.close()
        old = dict(first.c.header["quant"])
        seg = np.where(u.seg >= 0, 0, -1)
        row = np.full(len(u.seg), -1, np.int64)
        row[live] = rows
        snap = u.commit([new], seg, row)
        return {"from": old, "to": spec.header(first.head_dim), "live_capsules": int(len(live)),
                "kv_bytes": sum(snap.first.c.sections[n].nbytes for n in kv_sections(spec))}


def _float(seg: Segment, arr: np.ndarray) -> np.ndarray:
    if seg.spec.scheme == "bf16" and arr.dtype == np.uint16:
        return _bf16_to_f32(arr)
    return np.asarray(arr, np.float32)


def layer_float(seg: Segment, layer: int, local_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[m, H, D]`` KV of ``local_tokens`` of one segment, whatever its storage."""
    if seg.spec.quantised:
        return decode_tokens(seg, layer, local_tokens)
    return tuple(_float(seg, seg.c.array(n)[layer][local_tokens]) for n in ("k", "v"))
