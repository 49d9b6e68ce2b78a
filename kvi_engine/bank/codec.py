"""The bank codec over ``[tokens, heads, head_dim]`` blocks in numpy, run by the C++ core (csrc/kvi/quant.h);
:mod:`kvi_engine.bank.quant` is its PyTorch twin and specifies the format."""
from __future__ import annotations

import numpy as np

from kvi_engine.bank.spec import QuantSpec, capsule_axis


def encode_block(spec: QuantSpec, x: np.ndarray, lengths: np.ndarray | None = None, *, key: bool = False) -> dict:
    """Quantise ``x [n, H, D]`` (float32): ``{"": codes [n, H, D'], "_scale": ..., "_zero": ...}``. Per-channel key
    params (``key`` and channel mode) are per capsule of ``lengths`` (summing to n): ``[C, H, D]``."""
    from kvi_engine import _core
    n, H, D = x.shape
    x = np.ascontiguousarray(x, np.float32)
    if key and spec.key_mode == "channel":
        xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(H * n, D)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indptr = np.concatenate([starts[:-1] + h * n for h in range(H)] + [[H * n]]).astype(np.int64)
        codes, scale, zero = _core.quant_encode_columns(xt, spec.scheme, indptr)
        C = len(lengths)
        out = {"": codes.reshape(H, n, -1).transpose(1, 0, 2), "_scale": scale.reshape(H, C, D).transpose(1, 0, 2)}
        if zero is not None:
            out["_zero"] = zero.reshape(H, C, D).transpose(1, 0, 2)
        return out
    codes, scale, zero = _core.quant_encode_rows(x.reshape(n * H, D), spec.scheme, spec.group_for(D))
    out = {"": codes.reshape(n, H, -1), "_scale": scale.reshape(n, H, -1)}
    if zero is not None:
        out["_zero"] = zero.reshape(n, H, -1)
    return out


def decode_tokens(seg, layer: int, local_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[m, H, D]`` keys and values of the segment's ``local_tokens`` at ``layer`` (C++ gather+decode)."""
    from kvi_engine import _core
    H, D, spec = seg.num_kv_heads, seg.head_dim, seg.spec
    heads = np.arange(H, dtype=np.int64)
    code_rows = (local_tokens.astype(np.int64)[:, None] * H + heads).reshape(-1)
    out = []
    for p in ("k", "v"):
        codes = seg.c.array(p)[layer]
        codes = codes.reshape(codes.shape[0] * H, -1)
        scale = seg.c.array(p + "_scale")[layer]
        params_rows = code_rows
        if capsule_axis(spec, p + "_scale"):
            params_rows = (seg.token_rows(local_tokens).astype(np.int64)[:, None] * H + heads).reshape(-1)
        scale = scale.reshape(scale.shape[0] * H, -1)
        zero = None
        if spec.has_zero:
            zero = seg.c.array(p + "_zero")[layer]
            zero = zero.reshape(zero.shape[0] * H, -1)
        out.append(_core.quant_gather_decode(codes, scale, zero, spec.scheme, D, code_rows, params_rows)
                   .reshape(len(local_tokens), H, D))
    return out[0], out[1]
