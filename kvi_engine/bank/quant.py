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
  ``scale = fp16(absmax / 448)``; intN ``scale = fp16((hi - lo) / (2^N - 1))``, ``zero = fp16(lo)`` with the
  clipped range ``[lo, hi]`` below. Codes use the fp16-ROUNDED params: ``q = clamp(round_half_even(x / s))`` (intN:
  ``(x - z) / s``; fp8: RNE cast of ``clamp(x / s, -448, 448)``). A zero scale (constant or all-zero group) gives
  code 0 (int8/fp8) or 0 (intN, so ``x = zero``).
- intN clipping (encoder only; decoders never see it): ``[lo, hi] = [min + a*r, max - b*r]``, ``r = max - min``
  (fp32: ``lo = min + fp32(a * r)``), with ``(a, b)`` minimising the group's reconstruction error. Candidates, in
  order: ``a = b = i/32`` for i = 0..10; then, from the best ``a``, ``a + (j-4)/64`` for j = 0..8, j != 4 (``b``
  kept); then the same for ``b``. A candidate replaces the best only if its error is strictly smaller, so ties keep
  plain min/max (candidate 0). The error of a candidate is ``sum(rint(fp32(u * u) * 2^30))`` in int64 over the
  group, ``u = fp32(fp32(fp32(q * s) + z) - x) / m``, ``m = max(|min|, |max|)``: integer, hence the same in any
  summation order. No search (plain min/max) when ``r`` is 0 or ``m >= 32768`` (params could overflow fp16).
  Measured on Gaussian-like KV: relative RMS error int4 g128 0.100 -> 0.091, int4 g32 0.079 -> 0.071, int2 g128
  0.50 -> 0.33; int8/fp8 have no search (absmax is already within 0.1% of the best clipped scale).
- ``key_mode = "channel"`` (keys only; values are always per token): key params are per (layer, capsule, head,
  channel) over the capsule's tokens -- keys have channel outliers (KIVI, KVQuant) and are stored position-free, so
  the statistics of one channel within one capsule are tight. Sections ``k_scale`` (and ``k_zero``) are
  ``[L, C, H, D]`` indexed by the capsule's row in its segment; token ``t`` of a capsule with row ``c`` uses
  ``k_scale[l, c, h, :]``. Codes keep the same layout and packing.
- Bytes per token relative to fp16 (scales included): int8 ``0.5 + 1/D``; fp8 the same; int4 ``0.25 + 2/G``;
  int2 ``0.125 + 2/G``; channel-mode keys add ``2/n`` (int8) or ``4/n`` (intN) halves of a key per capsule of
  ``n`` tokens.

Prefix KV (``prefix_k``/``prefix_v``) is stored in the float scheme of the bank (fp32, fp16 or bf16), and in fp16 for
quantised banks (one short sequence; not worth quantising).
"""
from __future__ import annotations

import torch

from kvi_engine.bank.spec import _BITS, FLOAT_SCHEMES, KEY_MODES, QUANT_SCHEMES, SCHEMES, QuantSpec  # noqa: F401

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


_CUTS = tuple(i / 32 for i in range(1, 11))
_NUDGES = tuple((j - 4) / 64 for j in range(9) if j != 4)
_NO_SEARCH_ABOVE = 32768.0


def _sse(x, lo, hi, scheme, m, mask):
    """Fixed-point squared reconstruction error of groups ``x [..., n]`` under the params of ``[lo, hi]``."""
    scale, zero = _params(scheme, lo, hi)
    q = _codes(x, scheme, scale, zero).float()
    u = (q * scale.float() + zero.float() - x) / m
    w = torch.round(u * u * 2.0 ** 30).long()
    return (w if mask is None else w * mask).sum(-1, keepdim=True)


def _clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scheme: str, mask: torch.Tensor | None = None):
    """MSE-searched clipped range ``[lo', hi']`` of intN groups ``x [..., n]`` with stats ``lo``/``hi [..., 1]``
    (``mask [..., n]``: which elements belong to the group); the search is specified in the module docstring."""
    m = torch.maximum(lo.abs(), hi.abs())
    on = (hi - lo > 0) & (m < _NO_SEARCH_ABOVE)
    # Groups without a search (constant, empty, huge) run on zeros, whose result is discarded.
    lo_, hi_, x, m = (torch.where(on, t, 0.0) for t in (lo, hi, x, m))
    m = torch.where(on, m, 1.0)
    r = hi_ - lo_

    def cand(a, b):
        return lo_ + a * r, hi_ - b * r

    a = b = torch.zeros_like(lo)
    best = _sse(x, lo_, hi_, scheme, m, mask)
    for c in _CUTS:
        c = torch.full_like(lo, c)
        e = _sse(x, *cand(c, c), scheme, m, mask)
        a, b, best = torch.where(e < best, c, a), torch.where(e < best, c, b), torch.minimum(e, best)
    for end in ("a", "b"):
        base = a if end == "a" else b
        pick = base
        for d in _NUDGES:
            t = base + d
            e = _sse(x, *(cand(t, b) if end == "a" else cand(a, t)), scheme, m, mask)
            pick, best = torch.where(e < best, t, pick), torch.minimum(e, best)
        a, b = (pick, b) if end == "a" else (a, pick)
    lo2, hi2 = cand(a, b)
    return torch.where(on, lo2, lo), torch.where(on, hi2, hi)


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
    lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
    if spec.has_zero:
        lo, hi = _clip(xg, lo, hi, spec.scheme)
    scale, zero = _params(spec.scheme, lo, hi)
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
    if spec.has_zero and N:
        lengths = indptr.diff()
        pos = torch.arange(N) - indptr[:-1].repeat_interleave(lengths)
        padded = torch.zeros(C, int(lengths.max()), D)
        padded[seg, pos] = x
        mask = torch.arange(padded.shape[1]) < lengths[:, None]
        lo, hi = (t.squeeze(-1) for t in _clip(padded.transpose(1, 2), lo[..., None], hi[..., None], spec.scheme,
                                                 mask[:, None, :].long()))
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
