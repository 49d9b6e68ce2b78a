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
        seg = torch.where(segments.bool().any(-1), segments.argmax(-1), -1).to(torch.int32).numpy()
        seg_lse = torch.empty(B, Hq, Q, segments.shape[-1])
    # bool masks are read as their bytes (a view, no copy); contiguous() is free on the usual contiguous inputs
    mask = None if own_visible is None else _bytes(own_visible)
    _core.decode_attention(query.detach().contiguous().numpy(), k_inj.contiguous().numpy(),
                           v_inj.contiguous().numpy(), _bytes(inj_valid), own_k.detach().contiguous().numpy(),
                           own_v.detach().contiguous().numpy(), mask, out.numpy(), lse.numpy(),
                           scaling if scaling is not None else 1 / math.sqrt(D), seg,
                           None if seg_lse is None else seg_lse.numpy(), torch.get_num_threads())
    return out, lse, seg_lse


def _bytes(mask: torch.Tensor):
    """A bool (or uint8) mask as a C-contiguous uint8 numpy array, viewing a contiguous bool tensor's bytes."""
    mask = mask.contiguous()
    return (mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)).numpy()
