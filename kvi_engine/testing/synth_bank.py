"""Synthetic banks without a model (torch-free): for crash, fuzz and concurrency tests and the scale benchmark.

Every capsule carries a ``tag`` in its metadata and its KV is a deterministic function of that tag
(:func:`tagged_kv`), so a reader can check any capsule it sees against its own record: a torn state (table of one
version, data of another) cannot pass.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kvi_engine.bank.segments import SegmentWriter
from kvi_engine.bank.spec import QuantSpec

DIMS = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}


def tagged_kv(tag: int, n: int, num_layers: int, num_kv_heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``[L, n, H, D]`` float32 keys and values determined by ``tag`` (exactly representable in fp16)."""
    grid = np.arange(num_layers * n * num_kv_heads * head_dim, dtype=np.float32).reshape(
        num_layers, n, num_kv_heads, head_dim)
    k = np.round(np.sin(grid * 0.01 + tag * 0.7) * 256) / 64
    return k.astype(np.float16).astype(np.float32), (-k).astype(np.float16).astype(np.float32)


def tagged_token_ids(tag: int, n: int) -> list[int]:
    return [(tag * 7 + j) % 1000 + 1 for j in range(n)]


def read_tagged(bank, *, layers_of=None, atol: float = 0.0) -> dict[int, int]:
    """``{id: tag}`` of a bank of tagged capsules, checking every live capsule's tokens, keys and values against
    its tag (at ``layers_of(id)``, default every layer; within ``atol``, default exactly)."""
    import torch  # here, not at module level: crash-test children write banks without importing torch

    out = {}
    for i in bank.live_ids():
        seg, row = bank.snapshot.locate(i)
        tag = seg.meta[row]["tag"]
        start, n = bank.ranges[i].tolist()
        assert bank.token_ids(i) == tagged_token_ids(tag, n), (i, tag)
        want_k, want_v = tagged_kv(tag, n, bank.num_layers, bank.shape.num_kv_heads, bank.shape.head_dim)
        for layer in (layers_of(i) if layers_of else range(bank.num_layers)):
            k, v = bank.gather_kv(layer, torch.arange(start, start + n))
            np.testing.assert_allclose(k.float().numpy(), want_k[layer], atol=atol, rtol=0, err_msg=f"{i}, {tag}")
            np.testing.assert_allclose(v.float().numpy(), want_v[layer], atol=atol, rtol=0, err_msg=f"{i}, {tag}")
        out[i] = tag
    return out


def tagged_capsules(tags, dims=DIMS, min_len: int = 2, max_len: int = 6):
    """Metadata, token ids and concatenated KV of capsules with ``tags`` (lengths derived from the tag)."""
    meta, token_ids, ks, vs = [], [], [], []
    for tag in tags:
        n = min_len + tag % (max_len - min_len + 1)
        meta.append({"subject": f"s{tag}", "relation": "r", "object": f"o{tag}", "kind": "triple",
                     "statement": f"s{tag} r o{tag}", "tag": int(tag)})
        token_ids.append(tagged_token_ids(tag, n))
        k, v = tagged_kv(tag, n, *dims.values())
        ks.append(k)
        vs.append(v)
    return meta, token_ids, np.concatenate(ks, axis=1), np.concatenate(vs, axis=1)


def _writer(path: Path, spec: QuantSpec, lengths, token_ids, meta, dims, prefix_len: int = 1) -> SegmentWriter:
    L, H, D = dims["num_layers"], dims["num_kv_heads"], dims["head_dim"]
    pk = np.full((L, prefix_len, H, D), 0.5, np.float32)
    header = {"engine_version": "synthetic", "created_unix": time.time(),
              "fingerprint": {"name_or_path": "synthetic"}, "rope": {"rope_type": "default"}}
    return SegmentWriter(path, spec, **dims, lengths=lengths, token_ids=token_ids, meta=meta,
                         capsule_ids=np.arange(len(meta)), prefix_token_ids=list(range(1, prefix_len + 1)),
                         prefix_k=pk, prefix_v=-pk, header=header)


def create_tagged_bank(root, tags, quant="fp16", dims=DIMS, prefix_len: int = 1) -> Path:
    """A one-segment bank directory whose capsule ``i`` has tag ``tags[i]``, with a shared prefix (a BOS) of
    ``prefix_len`` tokens."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta, token_ids, k, v = tagged_capsules(tags, dims)
    w = _writer(root / "bank.kvb", QuantSpec.parse(quant), [len(t) for t in token_ids],
                np.concatenate([np.asarray(t, np.int32) for t in token_ids]), meta, dims, prefix_len)
    rows = np.arange(len(meta))
    for layer in range(dims["num_layers"]):
        w.put(layer, rows, k[layer], v[layer])
    w.close()
    return root


def create_random_bank(root, num_capsules: int, tokens_per_capsule: int = 8, quant="int8", dims=DIMS, *,
                       seed: int = 0, chunk: int = 1 << 16) -> Path:
    """A large one-segment bank of Gaussian KV, written in chunks of capsules (the scale benchmark)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n, L, H, D = tokens_per_capsule, dims["num_layers"], dims["num_kv_heads"], dims["head_dim"]
    lengths = np.full(num_capsules, n, np.int64)
    token_ids = rng.integers(1, 1000, num_capsules * n, dtype=np.int32)
    meta = [{"subject": f"e{i // 8}", "relation": "r", "object": f"o{i}", "kind": "triple"}
            for i in range(num_capsules)]
    w = _writer(root / "bank.kvb", QuantSpec.parse(quant), lengths, token_ids, meta, dims)
    for start in range(0, num_capsules, chunk):
        rows = np.arange(start, min(num_capsules, start + chunk))
        for layer in range(L):
            k = rng.standard_normal((len(rows) * n, H, D), dtype=np.float32)
            v = rng.standard_normal((len(rows) * n, H, D), dtype=np.float32)
            w.put(layer, rows, k, v)
    w.close()
    return root
