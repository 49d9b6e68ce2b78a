"""The C++ CPU backend of op ``decode_attention`` (``kvi_engine._core.decode_attention``): a decode step over the
plan's gathered float32 K/V, :func:`kvi_engine.attention.split.split_attention` in one native call per layer."""
from __future__ import annotations

import math

import torch

from kvi_engine import dispatch


def decode_attention_cpp(query, k_inj, v_inj, inj_valid, own_k, own_v, own_visible, scaling=None, segments=None):
    """:func:`~kvi_engine.attention.split.split_attention` in one native call (float32 CPU tensors): same arguments
    and results. Every key and value row is read once for all the query rows of its kv head, with no per-step
    tensors besides the outputs -- at batch 1 the PyTorch twin's dozen ops a layer cost more than the arithmetic."""
    from kvi_engine import _core

    if query.dtype != torch.float32 or query.device.type != "cpu":
        raise dispatch.BackendUnavailable(f"the C++ decode attention runs on float32 CPU tensors, got {query.dtype} "
                                          f"on {query.device}")
    B, Hq, Q, D = query.shape
    out = torch.empty(B, Hq, Q, D)
    lse = torch.empty(B, Hq, Q)
    seg = seg_lse = None
    if segments is not None:
        seg = _segment_index(segments)
        seg_lse = torch.empty(B, Hq, Q, segments.shape[-1])
    # bool masks are read as their bytes (a view, no copy); contiguous() is free on the usual contiguous inputs
    mask = None if own_visible is None else _bytes(own_visible)
    _core.decode_attention(query.detach().contiguous().numpy(), k_inj.contiguous().numpy(),
                           v_inj.contiguous().numpy(), _bytes(inj_valid), own_k.detach().contiguous().numpy(),
                           own_v.detach().contiguous().numpy(), mask, out.numpy(), lse.numpy(),
                           scaling if scaling is not None else 1 / math.sqrt(D), seg,
                           None if seg_lse is None else seg_lse.numpy(), torch.get_num_threads())
    return out, lse, seg_lse


class DecodeStep:
    """:func:`decode_attention_cpp` bound to one layer of a plan. A plan's injected K/V and slot mask are the same
    for every token of its life, so they are held here as the arrays the kernel reads, and a token's step is one
    native call plus its two output tensors. At batch 1 the general path's Python per layer and token (backend
    choice, gather lookup, mask and array conversions) cost several times the kernel's own work on short contexts,
    more than HF's plain SDPA path costs (``kvi bench overhead``, decode ratio at 1 capsule: 0.92 -> ~1.0).

    Values may come as fp16 (``values_fp16`` converts float32 ones), which the kernel converts as it loads them --
    exact for an fp16 bank, whose values are fp16 numbers (the keys are not: they are rotated in float32), and a
    quarter less memory traffic a step (:func:`kvi_engine.attention.op.decode_step` gathers them so for such banks).
    The step holds no reference to its plan (the plan's cache holds the step): a cycle would keep both alive until
    the cyclic collector runs, and with them the step's copy, which :mod:`kvi_engine.plan.arena` recycles when the
    step dies."""
    __slots__ = ("_tensors", "k_inj", "v_inj", "valid", "_segment", "__weakref__")

    def __init__(self, k_inj: torch.Tensor, v_inj: torch.Tensor, inj_valid: torch.Tensor, values_fp16: bool = False):
        if k_inj.dtype != torch.float32 or k_inj.device.type != "cpu":
            raise dispatch.BackendUnavailable(f"the C++ decode attention runs on float32 CPU tensors, got "
                                              f"{k_inj.dtype} on {k_inj.device}")
        v_inj = v_inj.half() if values_fp16 else v_inj
        self._tensors = (k_inj.contiguous(), v_inj.contiguous(), inj_valid.contiguous())  # what the arrays view
        self.k_inj, self.v_inj = self._tensors[0].numpy(), self._tensors[1].numpy()
        self.valid = _bytes(self._tensors[2])
        self._segment = None  # the kernel's slot -> segment table and the segment count (attribution)

    def __call__(self, query, own_k, own_v, own_mask=None, scaling=None, capsule_lse: bool = False, segments=None):
        """``out [B, Hq, Q, D]`` of :func:`decode_attention_cpp` for ``query [B, Hq, Q, D]`` over the bound
        injected KV and ``own_k/own_v [B, Hkv, T, D]``; ``own_mask`` bool ``[B or 1, 1, Q or 1, T]`` (True =
        attend) or None (causal). With ``capsule_lse``: ``(out, lse, seg_lse)`` over ``segments``, the plan's
        one-hot slot segments ``[B, S, n]`` or a function giving them (read at the first such call, then kept)."""
        from kvi_engine import _core

        B, Hq, Q, D = query.shape
        T = own_k.shape[2]
        mask = None if own_mask is None else _bytes(own_mask.expand(B, 1, Q, T)).reshape(B, Q, T)
        out = torch.empty(B, Hq, Q, D)
        lse = torch.empty(B, Hq, Q)
        seg = seg_lse = None
        if capsule_lse:
            if self._segment is None:  # the slot -> segment table, once per plan
                one_hot = segments() if callable(segments) else segments
                if one_hot is None:
                    raise ValueError("capsule_lse needs the plan's segments (segments=plan.segments)")
                self._segment = (_segment_index(one_hot), one_hot.shape[-1])
            seg, n = self._segment
            seg_lse = torch.empty(B, Hq, Q, n)
        _core.decode_attention(_array(query), self.k_inj, self.v_inj, self.valid, _array(own_k), _array(own_v), mask,
                               out.numpy(), lse.numpy(), scaling if scaling is not None else 1 / math.sqrt(D), seg,
                               None if seg_lse is None else seg_lse.numpy(), torch.get_num_threads())
        return (out, lse, seg_lse) if capsule_lse else out


def _segment_index(segments: torch.Tensor):
    """One-hot ``segments [B, S, n]`` as the kernel's int32 ``[B, S]`` table (-1: a slot of no segment)."""
    return torch.where(segments.bool().any(-1), segments.argmax(-1), -1).to(torch.int32).numpy()


def _array(x: torch.Tensor):
    """A C-contiguous numpy view of ``x`` (a copy only if it is strided; every op counts at this rate)."""
    return x.numpy() if x.is_contiguous() and not x.requires_grad else x.detach().contiguous().numpy()


def _bytes(mask: torch.Tensor):
    """A bool (or uint8) mask as a C-contiguous uint8 numpy array, viewing a contiguous bool tensor's bytes."""
    mask = mask.contiguous()
    return (mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)).numpy()
