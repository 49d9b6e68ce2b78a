"""KVBank: the compiled, memory-mapped store of capsule keys (position-free) and values.

Storage is layer-major with one token axis shared by all layers: capsule ``i`` is the token range
``[token_start, token_start + length)`` in every layer. A bank is a directory of segments (``bank.kvb`` after
compile; more after updates, listed by ``MANIFEST.kvb``: see :mod:`kvi_engine.bank.segments`) or a bare ``.kvb``
file; the token axis is the segments' axes back to back. Storage schemes (fp32/fp16/bf16, int8/int4/int2/fp8) are
specified in :mod:`kvi_engine.bank.quant`. The shared prefix (e.g. BOS) is stored once, in float.

Opening parses headers only (O(1) in bank size) and maps the files, so a bank object is a consistent snapshot that
later updates do not disturb. Tables are checksum-verified on first use, KV sections by :meth:`KVBank.verify`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from kvi_engine import dispatch
from kvi_engine.bank import quant
from kvi_engine.bank.codec import decode_tokens
from kvi_engine.bank.residency import DeviceKVCache
from kvi_engine.bank.segments import Segment, Snapshot
from kvi_engine.bank.spec import SCHEMES, QuantSpec, capsule_axis, kv_sections
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.formats.container import BankFormatError
from kvi_engine.models import fingerprint as fp

STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class BankShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int



class KVBank:
    def __init__(self, snapshot: Snapshot):
        self._snap = snapshot
        self._device_caches: dict = {}
        first = snapshot.first
        h = first.c.header
        try:
            self.shape = BankShape(first.num_layers, first.num_kv_heads, first.head_dim)
            self.num_capsules = snapshot.num_capsules
            self.num_tokens = int(snapshot.token_offsets[-1])
            self.quant = dict(h["quant"])
            self.fingerprint = dict(h["fingerprint"])
            self.rope = dict(h["rope"])
            self.prefix_token_ids = [int(t) for t in h["prefix_token_ids"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BankFormatError(f"{first.path}: header lacks or mangles field {e}") from None
        if self.quant.get("scheme") not in SCHEMES:
            raise BankFormatError(f"{first.path}: storage scheme {self.quant.get('scheme')!r} is not supported "
                                  f"by this engine (supported: {list(SCHEMES)})")
        self.spec: QuantSpec = first.spec
        P = len(self.prefix_token_ids)
        for name in ("prefix_k", "prefix_v"):
            sec = first.c.sections.get(name)
            if sec is None or sec.shape != (self.num_layers, P, self.shape.num_kv_heads, self.shape.head_dim):
                raise BankFormatError(f"{first.path}: section {name!r} is missing or mis-shaped")

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> "KVBank":
        """Open a bank directory or ``.kvb`` file. O(1) in bank size unless ``verify`` checks every section."""
        bank = cls(Snapshot.open(path))
        if verify:
            bank.verify()
        return bank

    def reopen(self) -> "KVBank":
        """A fresh snapshot of the same bank (this object keeps seeing the state it was opened on)."""
        return KVBank.open(self.root)

    def verify(self) -> None:
        """Check every section of every file against its checksum, and the tables against each other; raises
        :class:`BankFormatError` naming the file and section."""
        self._snap.verify()

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def _c(self):
        """The first segment's container (single-segment banks: the bank file)."""
        return self._snap.first.c

    @property
    def segments(self) -> list[Segment]:
        return self._snap.segments

    @property
    def path(self) -> Path:
        """The file that defines the bank: its manifest, or its only segment."""
        return self._snap.manifest.path if self._snap.manifest is not None else self._snap.first.path

    @property
    def root(self) -> Path:
        return self._snap.root

    @property
    def header(self) -> dict:
        return self._snap.first.c.header

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    @property
    def storage_dtype(self) -> torch.dtype:
        """dtype of :meth:`gather_kv`'s output: the stored float type, float32 for quantised schemes."""
        return STORAGE_DTYPES.get(self.spec.scheme, torch.float32)

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_token_ids)

    @property
    def generation(self) -> int:
        return self._snap.generation

    # -- tables ----------------------------------------------------------------------------------------------
    @cached_property
    def ranges(self) -> torch.Tensor:
        """``[num_capsules, 2]`` int64: global (token_start, length) of each capsule, valid for every layer;
        ``(0, 0)`` for removed capsules."""
        return torch.from_numpy(self._snap.ranges)

    def live_ids(self) -> list[int]:
        return self._snap.live_ids().tolist()

    def _check_id(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"capsule id must be an int, got {type(i).__name__}")
        if not 0 <= i < self.num_capsules:
            raise IndexError(f"capsule id {i} out of range: the bank holds {self.num_capsules} capsules (0..."
                             f"{self.num_capsules - 1})")
        if self._snap.locations[0][i] < 0:
            raise KeyError(f"capsule {i} was removed from the bank at {self.root}")
        return int(i)

    def token_ids(self, i: int) -> list[int]:
        seg, row = self._snap.locate(self._check_id(i))
        start, length = seg.table[row]
        return [int(t) for t in seg.token_ids[start:start + length]]

    def capsule(self, i: int) -> Capsule:
        seg, row = self._snap.locate(self._check_id(i))
        m = seg.meta[row]
        try:
            return Capsule.from_dict(m)
        except (KeyError, TypeError, ValueError) as e:
            raise BankFormatError(f"{seg.path}: capsule record {row} is malformed: {e}") from None

    def statement(self, i: int) -> str:
        seg, row = self._snap.locate(self._check_id(i))
        return seg.meta[row].get("statement", "")

    # -- tensors ---------------------------------------------------------------------------------------------
    def _float_view(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if arr.dtype == np.uint16 else t

    def gather_kv(self, layer: int, token_index: torch.Tensor, *, backend: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Position-free keys and values of bank tokens ``token_index`` (global, any shape) at ``layer``:
        ``[*token_index.shape, kv_heads, head_dim]`` each, in :attr:`storage_dtype`. Only the requested tokens are
        read and (for quantised schemes) dequantised, by the C++ codec or its PyTorch reference (op
        ``bank_dequant`` of :mod:`kvi_engine.dispatch`)."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range (bank has {self.num_layers} layers)")
        idx = torch.as_tensor(token_index, dtype=torch.long)
        flat = idx.reshape(-1).numpy()
        H, D = self.shape.num_kv_heads, self.shape.head_dim
        k = torch.empty(len(flat), H, D, dtype=self.storage_dtype)
        v = torch.empty_like(k)
        quantised = self.spec.quantised
        decode = dispatch.select("bank_dequant", backend)[1] if quantised else None
        for seg, pos, local in self._snap.split_tokens(flat):
            pos = torch.from_numpy(pos)
            if quantised:
                sk, sv = decode(seg, layer, local)
            else:
                ti = torch.from_numpy(local)
                sk = self._float_view(seg.c.array("k")[layer])[ti]
                sv = self._float_view(seg.c.array("v")[layer])[ti]
            k[pos], v[pos] = sk, sv
        return k.reshape(*idx.shape, H, D), v.reshape(*idx.shape, H, D)

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every bank token at ``layer``: ``[num_tokens, kv_heads, head_dim]`` each. Zero-copy
        views of the mapped file for a single-segment float bank; otherwise a dequantised copy of the whole layer
        (use :meth:`gather_kv` for the tokens you need)."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range (bank has {self.num_layers} layers)")
        if len(self.segments) == 1 and not self.spec.quantised:
            seg = self.segments[0]
            return self._float_view(seg.c.array("k")[layer]), self._float_view(seg.c.array("v")[layer])
        return self.gather_kv(layer, torch.arange(self.num_tokens))

    def prefix_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._snap.first.c
        return self._float_view(c.array("prefix_k")[layer]), self._float_view(c.array("prefix_v")[layer])

    # -- sizes and checks ------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self._snap.files)

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV codes and their scales/zero points in every segment (prefix excluded)."""
        return sum(seg.c.sections[n].nbytes for seg in self.segments for n in kv_sections(seg.spec))

    @property
    def bytes_per_token(self) -> float:
        """KV bytes per stored capsule token over all layers (keys + values, scales included)."""
        return self.kv_bytes / max(self.num_tokens, 1)

    def device_cache(self, device) -> DeviceKVCache:
        """This snapshot's storage-form residency cache on ``device`` (what the Triton path reads), created on first
        use. Capacity: ``KVI_DEVICE_CACHE_TOKENS`` token slots, default room for every capsule of the bank."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # "cuda" and "cuda:N" (the current one) share one cache
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (dev.type, dev.index)
        cache = self._device_caches.get(key)
        if cache is None:
            block = 16
            whole = int((-(-self.ranges[:, 1] // block)).sum()) * block
            raw = os.environ.get("KVI_DEVICE_CACHE_TOKENS", "").strip()
            try:
                capacity = int(raw or 0) or max(whole, block)
            except ValueError:
                raise ValueError(f"KVI_DEVICE_CACHE_TOKENS={raw!r}: expected a number of token slots") from None
            cache = self._device_caches[key] = DeviceKVCache(self, dev, capacity_tokens=capacity, block=block,
                                                             dtype=None)
        return cache

    def check_model(self, model, tokenizer=None) -> None:
        """Raise if ``model`` (and ``tokenizer``) is not the one this bank was compiled with."""
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        got = BankShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim)
        if got != self.shape:
            raise fp.FingerprintMismatch(f"{self.path}: bank shape {self.shape} does not match the model's {got}")
        fp.check(self.fingerprint, model, tokenizer, where=str(self.path))

    def describe(self) -> dict:
        # container version per file (1: written before the one-container format; compact rewrites to the
        # current one) and the bank layout version inside it
        return {"path": str(self.path), "format_version": self.header["format_version"],
                "container_versions": sorted({s.c.format_version for s in self.segments}),
                "bank_version": self.header.get("version"),
                "num_capsules": self.num_capsules, "num_tokens": self.num_tokens,
                "num_layers": self.num_layers, "num_kv_heads": self.shape.num_kv_heads,
                "head_dim": self.shape.head_dim, "storage": self.quant["scheme"], "quant": self.quant,
                "segments": [s.path.name for s in self.segments], "generation": self.generation,
                "live_capsules": int(len(self._snap.live_ids())),
                "prefix_token_ids": self.prefix_token_ids, "bytes_per_token": self.bytes_per_token,
                "kv_bytes": self.kv_bytes, "file_bytes": self.nbytes, "model": self.fingerprint.get("name_or_path"),
                "model_type": self.fingerprint.get("model_type"), "rope_type": self.rope.get("rope_type"),
                "sections": {n: sum(s.c.sections[n].nbytes for s in self.segments if n in s.c.sections)
                             for n in self._snap.first.c.sections}}

    def __repr__(self) -> str:
        return (f"KVBank({str(self.path)!r}, capsules={self.num_capsules}, tokens={self.num_tokens}, "
                f"layers={self.num_layers}, storage={self.quant['scheme']})")


def _dequant_cpp(seg: Segment, layer: int, local: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    k, v = decode_tokens(seg, layer, local)
    return torch.from_numpy(k), torch.from_numpy(v)


def _dequant_reference(seg: Segment, layer: int, local: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch twin of the C++ gather+decode: gather codes and params of the tokens, decode with quant.decode."""
    ti = torch.from_numpy(np.asarray(local, np.int64))
    out = []
    for p in ("k", "v"):
        rows = ti
        if capsule_axis(seg.spec, p + "_scale"):
            rows = torch.from_numpy(seg.token_rows(local).astype(np.int64))
        codes = torch.from_numpy(seg.c.array(p)[layer])[ti]
        scale = torch.from_numpy(seg.c.array(p + "_scale")[layer])[rows]
        zero = torch.from_numpy(seg.c.array(p + "_zero")[layer])[rows] if seg.spec.has_zero else None
        out.append(quant.decode(codes, scale, zero, seg.spec.scheme))
    return out[0], out[1]


dispatch.register("bank_dequant", "reference", _dequant_reference)
dispatch.register("bank_dequant", "cpp", _dequant_cpp)
