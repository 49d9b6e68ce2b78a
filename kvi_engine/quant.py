"""Quantised KV storage: format spec (what fused kernels read) and the PyTorch reference codec.

Format (bank format v1 sections; a scheme is the header field ``quant``)
-----------------------------------------------------------------------
``quant = {"scheme": s, "group_size": G, "key_mode": "token" | "channel"}``; ``L`` layers, ``T`` tokens of the
segment, ``C`` capsules of the segment, ``H`` KV heads, ``D`` head_dim. All scales and zero points are fp16 and live in
their own sections beside the codes. Dequantisation is computed in fp32.

=========  =========================  ====================================  ==========================================
scheme     codes ``k``/``v``          params per (layer, token, head, group)  dequant
=========  =========================  ====================================  ==========================================
fp32/16,   ``[L, T, H, D]`` float     none                                  identity (bf16 is stored as raw uint16)
bf16
int8       ``[L, T, H, D]`` int8      ``k_scale``/``v_scale`` fp16          ``x = q * scale``; symmetric, q in
                                      ``[L, T, H, D/G]``; G = D             [-127, 127]
int4       ``[L, T, H, D/2]`` uint8   ``*_scale``, ``*_zero`` fp16          ``x = q * scale + zero``; asymmetric,
                                      ``[L, T, H, D/G]``                    q in [0, 15]
int2       ``[L, T, H, D/4]`` uint8   as int4                               ``x = q * scale + zero``; q in [0, 3]
fp8        ``[L, T, H, D]`` uint8     ``*_scale`` fp16 ``[L, T, H, D/G]``   ``x = e4m3fn(q) * scale``; G = D
           (float8 e4m3fn bits)
=========  =========================  ====================================  ==========================================

- Group ``g`` of a row covers channels ``[g*G, (g+1)*G)``. ``G`` must divide ``D`` (int4/int2 default:
  ``min(128, D)``; int8/fp8 always ``D``: one scale per token and head).
- Packing of int4: byte ``j`` of a row holds channel ``2j`` in its LOW nibble and channel ``2j+1`` in its HIGH
  nibble. int2: byte ``j`` holds channel ``4j+i`` in bits ``[2i, 2i+2)``, i = 0..3.
- Encoding (bit-exact between C++ and reference): stats in fp32; int8 ``scale = fp16(absmax / 127)``; fp8
  ``scale = fp16(absmax / 448)``; intN ``scale = fp16((max - min) / (2^N - 1))``, ``zero = fp16(min)``. Codes use
  the fp16-ROUNDED params: ``q = clamp(round_half_even(x / s))`` (intN: ``(x - z) / s``; fp8: RNE cast of
  ``clamp(x / s, -448, 448)``). A zero scale (constant or all-zero group) gives code 0 (int8/fp8) or 0 (intN, so
  ``x = zero``).
- ``key_mode = "channel"`` (keys only; values are always per token): key params are per (layer, capsule, head,
  channel) over the capsule's tokens -- keys have channel outliers (KIVI, KVQuant) and are stored position-free, so
  the statistics of one channel within one capsule are tight. Sections ``k_scale`` (and ``k_zero``) are
  ``[L, C, H, D]`` indexed by the capsule's row in its segment; token ``t`` of a capsule with row ``c`` uses
  ``k_scale[l, c, h, :]``. Codes keep the same layout and packing.
- Bytes per token relative to fp16 (scales included): int8 ``0.5 + 1/D``; fp8 the same; int4 ``0.25 + 2/G``;
  int2 ``0.125 + 2/G``; channel-mode keys add ``2/n`` (int8) or ``4/n`` (intN) halves of a key per capsule of
  ``n`` tokens.

Prefix KV (``prefix_k``/``prefix_v``) is always fp16/fp32 (one short sequence; not worth quantising).
"""
from __future__ import annotations

import torch

from kvi_engine.quant_spec import _BITS, FLOAT_SCHEMES, KEY_MODES, QUANT_SCHEMES, SCHEMES, QuantSpec  # noqa: F401

_FP8_MAX = 448.0


def code_dtype(scheme: str) -> torch.dtype:
    return torch.int8 if scheme == "int8" else torch.uint8


# -- reference encoder / decoder (PyTorch, fp32 math) ---------------------------------------------------------
def _params(scheme: str, lo: torch.Tensor, hi: torch.Tensor):
    """fp16 scale (and zero) of groups with fp32 stats ``lo``/``hi``."""
    if scheme in ("int8", "fp8"):
        amax = torch.maximum(hi.abs(), lo.abs())  # abs: an all-zero group gets +0, never -0
        return (amax / (127.0 if scheme == "int8" else _FP8_MAX)).half(), None
    return ((hi - lo) / float((1 << _BITS[scheme]) - 1)).half(), lo.half()


def _codes(x: torch.Tensor, scheme: str, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """Unpacked codes of ``x`` under (broadcast) fp16 params."""
    s = scale.float()
    safe = torch.where(s > 0, s, 1.0)
    if scheme == "int8":
        return torch.round(torch.where(s > 0, x / safe, 0.0)).clamp(-127, 127).to(torch.int8)
    if scheme == "fp8":
        r = torch.where(s > 0, x / safe, 0.0).clamp(-_FP8_MAX, _FP8_MAX)
        return r.to(torch.float8_e4m3fn).view(torch.uint8)
    levels = float((1 << _BITS[scheme]) - 1)
    r = torch.where(s > 0, (x - zero.float()) / safe, 0.0)
    return torch.round(r).clamp(0, levels).to(torch.uint8)


def pack(q: torch.Tensor, scheme: str) -> torch.Tensor:
    bits = _BITS.get(scheme)
    if bits is None:
        return q
    per = 8 // bits
    q = q.reshape(*q.shape[:-1], q.shape[-1] // per, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (q << shifts).sum(-1).to(torch.uint8)


def unpack(codes: torch.Tensor, scheme: str) -> torch.Tensor:
    bits = _BITS.get(scheme)
    if bits is None:
        return codes
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
    q = (codes.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(*codes.shape[:-1], codes.shape[-1] * per)


def _check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantise non-finite keys/values (inf or nan in the input)")


def encode_rows(x: torch.Tensor, spec: QuantSpec):
    """Quantise rows ``x [N, D]`` with per-row groups: ``(codes [N, D'], scale [N, D/G], zero [N, D/G] | None)``."""
    x = x.float()
    _check_finite(x)
    N, D = x.shape
    G = spec.group_for(D)
    xg = x.reshape(N, D // G, G)
    scale, zero = _params(spec.scheme, xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True))
    q = _codes(xg, spec.scheme, scale, zero)
    return (pack(q.reshape(N, D), spec.scheme), scale.reshape(N, D // G),
            None if zero is None else zero.reshape(N, D // G))


def encode_columns(x: torch.Tensor, spec: QuantSpec, indptr: torch.Tensor):
    """Quantise ``x [N, D]`` with per-channel params over row segments ``indptr [C + 1]`` (capsules):
    ``(codes [N, D'], scale [C, D], zero [C, D] | None)``."""
    x = x.float()
    _check_finite(x)
    N, D = x.shape
    seg = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
    if len(seg) != N:
        raise ValueError(f"indptr covers {len(seg)} rows, x has {N}")
    C = len(indptr) - 1
    lo = torch.full((C, D), float("inf")).scatter_reduce(0, seg[:, None].expand(N, D), x, "amin")
    hi = torch.full((C, D), float("-inf")).scatter_reduce(0, seg[:, None].expand(N, D), x, "amax")
    scale, zero = _params(spec.scheme, lo, hi)
    q = _codes(x, spec.scheme, scale[seg], None if zero is None else zero[seg])
    return pack(q, spec.scheme), scale, zero


def decode(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, scheme: str) -> torch.Tensor:
    """Dequantise ``codes [..., D']`` with params ``[..., D/G]`` (G = D / params' last dim) to fp32 ``[..., D]``."""
    q = unpack(codes, scheme)
    if scheme == "fp8":
        q = q.to(torch.uint8).view(torch.float8_e4m3fn)
    q = q.float()
    D, ng = q.shape[-1], scale.shape[-1]
    qg = q.reshape(*q.shape[:-1], ng, D // ng)
    out = qg * scale.float().unsqueeze(-1)
    if zero is not None:
        out = out + zero.float().unsqueeze(-1)
    return out.reshape(q.shape)
