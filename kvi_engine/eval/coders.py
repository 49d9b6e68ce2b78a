"""Candidate KV coders simulated on a bank, for ``kvi bank accuracy --simulate`` (issue: int4 at <= 0.28x fp16 bytes).

A simulated bank holds what attention would read from a bank in that coder: each layer's keys and values are
transformed, encoded and decoded by the reference codec (:mod:`kvi_engine.bank.quant`, the shipped per-token scheme,
e.g. int4 g64), the transform undone, and the result stored as fp32. Nothing else about the bank changes. Shipping a
coder would also need its format, the undo inside every reader of the storage form (C++ fused kernel and gather,
Triton, vLLM connector), which is why candidates are judged this way first.

Coders (``<scheme>+<coder>``), all with one set of parameters per (layer, kv head) over the bank's tokens -- a few
hundred bytes a layer, which the bytes ratio leaves out:

- ``hadamard``: rows rotated by the normalised Sylvester Hadamard matrix (QuaRot): spreads channel outliers over the
  row before the per-token range is taken;
- ``rotate``: a seeded random orthogonal matrix instead (SpinQuant's starting point);
- ``mean-scale``: each channel's mean over the layer's tokens subtracted and its standard deviation divided out
  before rounding (KVQuant-style per-channel statistics, folded into the per-token code): keys of the early layers
  are mostly a constant vector, which a per-token range spends its levels on.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.quant import decode, encode_rows
from kvi_engine.bank.spec import QuantSpec

CODERS = ("hadamard", "rotate", "mean-scale")


def hadamard(n: int) -> np.ndarray:
    """The ``n x n`` Sylvester Hadamard matrix divided by sqrt(n) (orthogonal; n a power of 2)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-2 head_dim, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


def random_rotation(n: int, seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)  # sign fix: a Haar-distributed orthogonal matrix


def parse(label: str) -> tuple[QuantSpec, str]:
    """``"int4+hadamard"`` -> (QuantSpec int4, "hadamard")."""
    scheme, _, coder = label.partition("+")
    if coder not in CODERS:
        raise ValueError(f"unknown simulated coder {label!r}; expected <scheme>+<coder>, coder one of {CODERS}")
    spec = QuantSpec.parse(scheme)
    if not spec.quantised or spec.key_mode != "token":
        raise ValueError(f"{label!r}: simulated coders wrap a per-token quantised scheme (int8, int4, int2, fp8)")
    return spec, coder


def _round_trip(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Encode and decode rows ``x [N, D]`` with the reference codec."""
    codes, scale, zero = encode_rows(torch.from_numpy(np.ascontiguousarray(x, np.float32)), spec)
    return decode(codes, scale, zero, spec.scheme).numpy()


def simulate(x: np.ndarray, spec: QuantSpec, coder: str, seed: int = 0) -> np.ndarray:
    """What a bank in ``spec`` + ``coder`` returns for one layer's keys or values ``x [T, H, D]``."""
    T, H, D = x.shape
    out = np.empty_like(x, dtype=np.float32)
    for h in range(H):
        y = x[:, h].astype(np.float32)
        if coder == "mean-scale":
            mu = y.mean(0, keepdims=True)
            sd = np.maximum(y.std(0, keepdims=True), np.float32(1e-6))
            out[:, h] = _round_trip((y - mu) / sd, spec) * sd + mu
        else:
            rot = hadamard(D) if coder == "hadamard" else random_rotation(D, seed)
            out[:, h] = _round_trip(y @ rot, spec) @ rot.T
    return out


def bytes_ratio(spec: QuantSpec, head_dim: int) -> float:
    """KV bytes per token of ``spec`` relative to fp16 (codes and per-group fp16 params; the coders' per-layer
    parameters left out)."""
    groups = head_dim // spec.group_for(head_dim)
    return (spec.code_dim(head_dim) + 2 * groups * (2 if spec.has_zero else 1)) / (2 * head_dim)


def simulated_bank(ref: KVBank, out: str | Path, label: str, seed: int = 0) -> KVBank:
    """An fp32 copy of ``ref`` at ``out`` holding ``label``'s reconstruction of every layer's keys and values."""
    spec, coder = parse(label)
    shutil.copytree(ref.root, out)
    bank_updates.requantize(out, "fp32", transform=lambda layer, k, v: (simulate(k, spec, coder, seed),
                                                                         simulate(v, spec, coder, seed + 1)))
    return KVBank.open(out)
