"""Bank directories as segments plus a manifest: the read-side snapshot and the segment writer (torch-free).

A bank directory holds one or more *segments*, each a complete ``.kvb`` container (capsule table, token ids, capsule
metadata, prefix KV, the KV sections of :mod:`kvi_engine.bank.quant` and ``capsule_ids``: the bank-wide id of each row).
A freshly compiled bank is the single segment ``bank.kvb``. Once updated, ``MANIFEST.kvb`` (also a container) names
the segments in order and maps every capsule id to ``(segment, row)`` -- or to ``-1`` once removed (a tombstone).
Updates write new segment files and then rename a new manifest over the old one, so a reader sees the old state or
the new one. Segment files are never modified after their rename; a reader maps every file it uses when it opens,
so a bank opened before an update keeps its snapshot even if compaction deletes the files afterwards.

The bank's token axis is the concatenation of the segments' token axes in manifest order: global token
``token_offset[s] + t`` is token ``t`` of segment ``s``; a capsule's ``(token_start, length)`` is global.
"""
from __future__ import annotations

import os
import uuid
from functools import cached_property
from pathlib import Path

import msgpack
import numpy as np

from kvi_engine.bank.codec import encode_block
from kvi_engine.bank.spec import QuantSpec, capsule_axis, kv_sections
from kvi_engine.capsules.capsule import CAPSULE_KINDS
from kvi_engine.formats.container import BankFormatError, Container, ContainerWriter

MANIFEST_FILE = "MANIFEST.kvb"
BANK_VERSION = 1  # version of the "kvi-bank" / "kvi-manifest" kinds of the container
FIRST_SEGMENT = "bank.kvb"
_OPEN_RETRIES = 8


def section_layout(spec: QuantSpec, L: int, T: int, C: int, H: int, D: int) -> dict[str, tuple[str, tuple]]:
    """``name -> (dtype, shape)`` of every KV section of a segment (the format table of :mod:`kvi_engine.bank.quant`)."""
    if not spec.quantised:
        return {"k": (spec.scheme, (L, T, H, D)), "v": (spec.scheme, (L, T, H, D))}
    code = "int8" if spec.scheme == "int8" else "uint8"
    out = {"k": (code, (L, T, H, spec.code_dim(D))), "v": (code, (L, T, H, spec.code_dim(D)))}
    ng = D // spec.group_for(D)
    for name in kv_sections(spec)[2:]:
        out[name] = ("fp16", (L, C, H, D) if capsule_axis(spec, name) else (L, T, H, ng))
    return out


def _record_fault(rec: dict) -> str:
    """What is wrong with one capsule record ("" when nothing): the fields every reader relies on."""
    for key in ("subject", "relation", "object"):
        v = rec.get(key)
        if not isinstance(v, str) or not v.strip():
            return f"lacks a non-empty string {key!r}"
    if rec.get("kind", "triple") not in CAPSULE_KINDS:
        return f"has kind {rec.get('kind')!r} (expected one of {', '.join(CAPSULE_KINDS)})"
    if not isinstance(rec.get("entities", []), list) or not isinstance(rec.get("attributes", []), list):
        return "has non-list 'entities' or 'attributes'"
    for key in ("statement", "sentence"):
        if not isinstance(rec.get(key, ""), str):
            return f"has a non-string {key!r}"
    if not isinstance(rec.get("sentence_id"), (str, type(None))):
        return "has a non-string 'sentence_id'"
    return ""


class Segment:
    """One segment file, mapped at open; tables are checksum-verified on first use."""

    def __init__(self, path: Path, *, inside: bool = True):
        # Files named inside a bank directory must be regular files of it: a symlinked segment (which could point
        # anywhere) is refused unread. A bank file the user names directly may be a link.
        self.c = Container(path, "kvi-bank", (BANK_VERSION,), follow_symlinks=not inside)
        h = self.c.header
        try:
            self.num_layers, self.num_kv_heads, self.head_dim = (int(h["num_layers"]), int(h["num_kv_heads"]),
                                                                 int(h["head_dim"]))
            self.num_capsules, self.num_tokens = int(h["num_capsules"]), int(h["num_tokens"])
            self.spec = QuantSpec.parse(dict(h["quant"]))
            self.segment_id = str(h.get("segment_id", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BankFormatError(f"{path}: header lacks or mangles field {e}") from None
        dims = (self.num_layers, self.num_tokens, self.num_capsules, self.num_kv_heads, self.head_dim)
        if min(dims) < 0 or min(dims[:1] + dims[3:]) < 1:
            raise BankFormatError(f"{path}: header holds impossible sizes {dims}")
        try:
            layout = section_layout(self.spec, *dims)
        except ValueError as e:
            raise BankFormatError(f"{path}: {e}") from None
        # The tables' extents are checked against the header here, before anything is sized from its counts (a
        # forged num_capsules must not allocate an id map of that size).
        layout = dict(layout, capsule_table=("int64", (self.num_capsules, 2)), token_ids=("int32", (self.num_tokens,)))
        if "capsule_ids" in self.c.sections:
            layout["capsule_ids"] = ("int64", (self.num_capsules,))
        for name, (dtype, shape) in layout.items():
            s = self.c.sections.get(name)
            if s is None or s.dtype != dtype or s.shape != shape:
                got = None if s is None else (s.dtype, s.shape)
                raise BankFormatError(f"{path}: section {name!r} is {got}, expected {(dtype, shape)}")
        self._verified: set[str] = set()

    @property
    def path(self) -> Path:
        return self.c.path

    def checked(self, name: str) -> np.ndarray:
        if name not in self._verified:
            self.c.verify([name])
            self._verified.add(name)
        return self.c.array(name)

    @cached_property
    def table(self) -> np.ndarray:
        """``[num_capsules, 2]`` int64 (token_start, length), local to this segment."""
        t = np.asarray(self.checked("capsule_table"))
        # start + length is compared as start > num_tokens - length: a forged (2^62, 2^62) row cannot wrap int64
        if t.shape != (self.num_capsules, 2) or t.dtype != np.int64 or (t.size and (
                t[:, 0].min() < 0 or t[:, 1].min() < 1 or t[:, 1].max() > self.num_tokens or
                (t[:, 0] > self.num_tokens - t[:, 1]).any() or (t[1:, 0] - t[:-1, 0] < t[:-1, 1]).any())):
            # rows in token order, none overlapping the next (the differences cannot wrap once rows are in range)
            raise BankFormatError(f"{self.path}: section 'capsule_table' holds out-of-range, unsorted or "
                                  f"overlapping token ranges")
        return t

    @cached_property
    def capsule_ids(self) -> np.ndarray:
        if "capsule_ids" not in self.c.sections:
            return np.arange(self.num_capsules, dtype=np.int64)
        ids = np.asarray(self.checked("capsule_ids"))
        if ids.shape != (self.num_capsules,) or ids.dtype != np.int64:
            raise BankFormatError(f"{self.path}: section 'capsule_ids' has the wrong shape or dtype")
        return ids

    @cached_property
    def token_ids(self) -> np.ndarray:
        t = self.checked("token_ids")
        if t.shape != (self.num_tokens,):
            raise BankFormatError(f"{self.path}: section 'token_ids' has shape {t.shape}, expected ({self.num_tokens},)")
        return t

    @cached_property
    def meta(self) -> list[dict]:
        try:
            m = msgpack.unpackb(self.checked("capsule_meta").tobytes(), raw=False)
        except Exception as e:  # noqa: BLE001 -- checksummed but undecodable: a format error
            raise BankFormatError(f"{self.path}: section 'capsule_meta' does not decode: {e}") from None
        if not isinstance(m, list) or len(m) != self.num_capsules or not all(isinstance(x, dict) for x in m):
            raise BankFormatError(f"{self.path}: section 'capsule_meta' does not hold one record per capsule")
        for row, rec in enumerate(m):
            bad = _record_fault(rec)
            if bad:
                raise BankFormatError(f"{self.path}: capsule record {row} {bad}")
        return m

    def token_rows(self, local_tokens: np.ndarray) -> np.ndarray:
        """Capsule row of each local token (for per-capsule key params)."""
        return np.searchsorted(self.table[:, 0], local_tokens, side="right") - 1

    def compatible(self, other: "Segment") -> None:
        keys = ("num_layers", "num_kv_heads", "head_dim", "quant", "prefix_token_ids", "fingerprint")
        a, b = self.c.header, other.c.header
        bad = [k for k in keys if a.get(k) != b.get(k)]
        if bad:
            raise BankFormatError(f"{other.path}: segment disagrees with {self.path.name} on {bad}")


class Snapshot:
    """The segments and capsule-id map of a bank at one instant."""

    def __init__(self, root: Path, segments: list[Segment], manifest: Container | None, generation: int):
        self.root, self.segments, self.manifest, self.generation = root, segments, manifest, generation
        for s in segments[1:]:
            segments[0].compatible(s)
        self.token_offsets = np.concatenate([[0], np.cumsum([s.num_tokens for s in segments])]).astype(np.int64)
        if manifest is None:
            self.num_capsules = segments[0].num_capsules
        else:
            try:
                self.num_capsules = int(manifest.header["num_capsules"])
            except (KeyError, TypeError, ValueError) as e:
                raise BankFormatError(f"{manifest.path}: header lacks or mangles field {e}") from None
            for name in ("capsule_segment", "capsule_row"):
                s = manifest.sections.get(name)
                if s is None or s.dtype != "int32" or s.shape != (self.num_capsules,):
                    raise BankFormatError(f"{manifest.path}: section {name!r} is missing or mis-shaped")

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Snapshot":
        root = Path(root)
        if root.is_file():
            return cls(root.parent, [Segment(root, inside=False)], None, 0)
        missing = None
        for _ in range(_OPEN_RETRIES):
            mpath = root / MANIFEST_FILE
            try:
                manifest = Container(mpath, "kvi-manifest", (BANK_VERSION,), follow_symlinks=False)
            except FileNotFoundError:
                if not (root / FIRST_SEGMENT).exists() and not mpath.exists():
                    raise FileNotFoundError(f"{root}: no such bank (neither {MANIFEST_FILE} nor {FIRST_SEGMENT})")
                if mpath.exists():
                    continue
                return cls(root, [Segment(root / FIRST_SEGMENT)], None, 0)
            try:
                entries = manifest.header["segments"]
                generation = int(manifest.header["generation"])
                files = [(str(e["file"]), str(e["segment_id"])) for e in entries]
            except (KeyError, TypeError, ValueError) as e:
                raise BankFormatError(f"{mpath}: header lacks or mangles field {e}") from None
            if not files or any(os.sep in f or f.startswith(".") for f, _ in files):
                raise BankFormatError(f"{mpath}: bad segment list {files}")
            try:
                segments = [Segment(root / f) for f, _ in files]
            except FileNotFoundError as e:
                # A compaction replaced the manifest after we read it: read the new one. The same manifest naming
                # the same missing file twice is a broken bank, not a race.
                if missing == (generation, e.filename):
                    raise BankFormatError(f"{e.filename}: segment file named by {mpath} (generation "
                                          f"{generation}) is missing") from None
                missing = (generation, e.filename)
                continue
            for seg, (f, sid) in zip(segments, files):
                if seg.segment_id != sid:
                    raise BankFormatError(f"{seg.path}: segment id {seg.segment_id!r} is not the {sid!r} the "
                                          "manifest names (file replaced behind the manifest)")
            return cls(root, segments, manifest, generation)
        raise BankFormatError(f"{root}: the manifest kept changing while opening ({_OPEN_RETRIES} tries)")

    @property
    def first(self) -> Segment:
        return self.segments[0]

    @cached_property
    def locations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(segment, row)`` int64 per capsule id; segment ``-1`` for removed capsules."""
        if self.manifest is None:
            return np.zeros(self.num_capsules, np.int64), np.arange(self.num_capsules, dtype=np.int64)
        self.manifest.verify(["capsule_segment", "capsule_row"])
        seg = self.manifest.array("capsule_segment").astype(np.int64)
        row = self.manifest.array("capsule_row").astype(np.int64)
        live = seg >= 0
        counts = np.array([s.num_capsules for s in self.segments], np.int64)
        if (seg >= len(self.segments)).any() or (live & ((row < 0) | (row >= counts[np.where(live, seg, 0)]))).any():
            raise BankFormatError(f"{self.manifest.path}: capsule map points outside its segments")
        return seg, row

    @cached_property
    def ranges(self) -> np.ndarray:
        """``[num_capsules, 2]`` int64 global (token_start, length); ``(0, 0)`` for removed capsules."""
        seg, row = self.locations
        out = np.zeros((self.num_capsules, 2), np.int64)
        for s, segment in enumerate(self.segments):
            mask = seg == s
            if mask.any():
                out[mask] = segment.table[row[mask]]
                out[mask, 0] += self.token_offsets[s]
        return out

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self.locations[0] >= 0)

    def locate(self, i: int) -> tuple[Segment, int]:
        seg, row = self.locations
        if seg[i] < 0:
            raise KeyError(f"capsule {i} was removed from the bank at {self.root}")
        return self.segments[int(seg[i])], int(row[i])

    def split_tokens(self, token_index: np.ndarray):
        """Yield ``(segment, positions, local tokens)`` for the global ``token_index`` (1-D)."""
        s_of = np.searchsorted(self.token_offsets, token_index, side="right") - 1
        if token_index.size and (token_index.min() < 0 or token_index.max() >= self.token_offsets[-1]):
            raise IndexError(f"token index out of range [0, {self.token_offsets[-1]})")
        for s in np.unique(s_of):
            pos = np.flatnonzero(s_of == s)
            yield self.segments[int(s)], pos, token_index[pos] - self.token_offsets[s]

    def verify(self) -> None:
        """Checksums of every file, then the tables against each other: ranges within each segment's token axis,
        well-formed records, and every live capsule id stored under that id in its segment."""
        if self.manifest is not None:
            self.manifest.verify()
        for s in self.segments:
            s.c.verify()
        # every segment's tables, those whose capsules were all removed included (compact would still read them)
        _ = [(s.table, s.meta, s.token_ids, s.capsule_ids) for s in self.segments], self.ranges
        seg, row = self.locations
        for si, s in enumerate(self.segments):
            mine = np.flatnonzero(seg == si)
            if (s.capsule_ids[row[mine]] != mine).any():
                raise BankFormatError(f"{s.path}: section 'capsule_ids' disagrees with the capsule map of "
                                      f"{self.manifest.path if self.manifest is not None else 'the bank'}")

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.segments] + ([self.manifest.path] if self.manifest is not None else [])


def new_segment_name(generation: int) -> str:
    return f"seg-{generation:06d}-{uuid.uuid4().hex[:12]}.kvb"


class SegmentWriter:
    """Writes one segment: tables first, then KV capsule by capsule (float, encoded here) or raw sections."""

    def __init__(self, path: Path, spec: QuantSpec, *, num_layers: int, num_kv_heads: int, head_dim: int,
                 lengths: np.ndarray, token_ids: np.ndarray, meta: list[dict], capsule_ids: np.ndarray,
                 prefix_token_ids: list[int], prefix_k: np.ndarray, prefix_v: np.ndarray, header: dict):
        self.spec, self.path = spec, Path(path)
        self.L, self.H, self.D = num_layers, num_kv_heads, head_dim
        lengths = np.asarray(lengths, np.int64)
        if len(lengths) != len(meta) or len(lengths) != len(capsule_ids) or (lengths < 1).any():
            raise ValueError(f"segment tables disagree: {len(lengths)} lengths, {len(meta)} records, "
                             f"{len(capsule_ids)} ids (every capsule needs >= 1 token)")
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.lengths = lengths
        self.T, self.C = int(lengths.sum()), len(lengths)
        if len(token_ids) != self.T:
            raise ValueError(f"{len(token_ids)} token ids for {self.T} tokens")
        self.header = dict(header, num_layers=self.L, num_kv_heads=self.H, head_dim=self.D, num_capsules=self.C,
                           num_tokens=self.T, quant=spec.header(head_dim), prefix_token_ids=list(prefix_token_ids),
                           segment_id=uuid.uuid4().hex)
        self.w = ContainerWriter(self.path, "kvi-bank", BANK_VERSION)
        try:
            self.w.add("capsule_table", np.stack([self.starts, lengths], axis=1))
            self.w.add("token_ids", np.asarray(token_ids, np.int32))
            self.w.add("capsule_meta", msgpack.packb(meta, use_bin_type=True))
            self.w.add("capsule_ids", np.asarray(capsule_ids, np.int64))
            self.w.add("prefix_token_ids", np.asarray(prefix_token_ids, np.int32))
            pdt = spec.scheme if not spec.quantised else "fp16"
            self.w.add("prefix_k", _np_float(prefix_k, pdt), pdt)
            self.w.add("prefix_v", _np_float(prefix_v, pdt), pdt)
            self.out = {n: self.w.reserve(n, dt, shape)
                        for n, (dt, shape) in section_layout(spec, self.L, self.T, self.C, self.H, self.D).items()}
        except BaseException:
            self.w.abort()
            raise

    def put(self, layer: int, rows: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """KV of capsules ``rows`` at ``layer``: ``k``/``v`` float ``[sum(lengths[rows]), H, D]`` in row order."""
        rows = np.asarray(rows, np.int64)
        lens = self.lengths[rows]
        if k.shape != (int(lens.sum()), self.H, self.D) or v.shape != k.shape:
            raise ValueError(f"KV of shape {k.shape}/{v.shape} for capsules of {int(lens.sum())} tokens")
        if not self.spec.quantised:
            enc = {"k": {"": _np_float(k, self.spec.scheme)}, "v": {"": _np_float(v, self.spec.scheme)}}
        else:
            enc = {"k": encode_block(self.spec, k, lens, key=True), "v": encode_block(self.spec, v, lens)}
        src = np.concatenate([[0], np.cumsum(lens)])
        contiguous = len(rows) > 0 and (np.diff(rows) == 1).all()
        for p, parts in enc.items():
            for suffix, arr in parts.items():
                dst = self.out[p + suffix]
                if capsule_axis(self.spec, p + suffix):
                    dst[layer, rows] = arr
                    continue
                if contiguous:
                    s = int(self.starts[rows[0]])
                    dst[layer, s:s + len(arr)] = arr
                    continue
                for j, r in enumerate(rows):
                    s = int(self.starts[r])
                    dst[layer, s:s + int(lens[j])] = arr[src[j]:src[j + 1]]

    def put_raw(self, name: str, layer: int, arr: np.ndarray) -> None:
        """A whole layer of one section, already in storage form (compaction copies bytes, never re-encodes)."""
        self.out[name][layer] = arr

    def close(self) -> "Segment":
        try:
            for arr in self.out.values():
                if isinstance(arr, np.memmap):
                    arr.flush()
            self.out = {}
            self.w.close(self.header)
        except BaseException:  # a failed flush or header write (disk full): no temporary file left behind
            self.abort()
            raise
        return Segment(self.path)

    def abort(self) -> None:
        self.out = {}
        self.w.abort()


def _np_float(x: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "bf16":
        if x.dtype == np.uint16:
            return x
        # round-to-nearest-even to bfloat16, kept as raw uint16 bits
        b = np.ascontiguousarray(x, np.float32).view(np.uint32)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.asarray(x, {"fp32": np.float32, "fp16": np.float16}[scheme])
