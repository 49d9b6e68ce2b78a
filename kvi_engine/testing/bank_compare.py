"""Bank against bank, capsule by capsule, as stored: what 'the same bank' means for compiles that lay their
segments out differently (one segment vs one per shard)."""
from __future__ import annotations

import numpy as np

from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.segments import section_layout
from kvi_engine.bank.spec import capsule_axis


def stored_capsule(bank: KVBank, i: int) -> dict[str, np.ndarray]:
    """Every stored byte of capsule ``i``: token ids, and per KV section (codes, scales, zeros or floats) its rows
    ``[layers, length, heads, …]`` (or its per-capsule ``[layers, heads, …]`` key params)."""
    seg, row = bank.snapshot.locate(i)
    start, n = (int(x) for x in seg.table[row])
    out = {"token_ids": np.asarray(seg.token_ids[start:start + n])}
    layout = section_layout(seg.spec, seg.num_layers, seg.num_tokens, seg.num_capsules, seg.num_kv_heads,
                            seg.head_dim)
    for name in layout:
        arr = seg.c.array(name)
        out[name] = np.asarray(arr[:, row] if capsule_axis(seg.spec, name) else arr[:, start:start + n])
    return out


def bank_differences(a: KVBank, b: KVBank) -> list[str]:
    """Where banks ``a`` and ``b`` differ, as stored (``[]``: same ids, capsule records, token ranges, token ids,
    prefix and KV bytes). Floats are compared bit for bit (``np.array_equal`` on the raw storage)."""
    diffs = []
    if a.num_capsules != b.num_capsules:
        return [f"num_capsules {a.num_capsules} vs {b.num_capsules}"]
    if a.live_ids() != b.live_ids():
        diffs.append("live ids differ")
    if not np.array_equal(a.ranges.numpy(), b.ranges.numpy()):
        diffs.append("capsule tables (token_start, length) differ")
    if a.prefix_token_ids != b.prefix_token_ids:
        diffs.append("prefix token ids differ")
    for name in ("prefix_k", "prefix_v"):
        if not np.array_equal(a.segments[0].c.array(name), b.segments[0].c.array(name)):
            diffs.append(f"{name} differs")
    qa, qb = a.segments[0].c.header["quant"], b.segments[0].c.header["quant"]
    if qa != qb:
        return diffs + [f"storage {qa} vs {qb}"]
    for i in a.live_ids():
        (sa, ra), (sb, rb) = a.snapshot.locate(i), b.snapshot.locate(i)
        if sa.meta[ra] != sb.meta[rb]:
            diffs.append(f"capsule {i}: records differ")
        x, y = stored_capsule(a, i), stored_capsule(b, i)
        for name in x:
            if x[name].dtype != y[name].dtype or x[name].tobytes() != y[name].tobytes():
                diffs.append(f"capsule {i}: {name} differs")
    return diffs
