"""inject(): make an unmodified HF causal LM attend to bank capsules, for plain forward calls and generate().

Inside the context:
- the model's attention implementation is switched to ``"kvi"``, a registered attention function that runs
  :func:`kvi_engine.attention.op.prefix_attention` (injected tokens first, then the row's own cached KV);
- a forward pre-hook on the decoder shifts each row's positions by its plan offset, so the prompt starts at
  position ``P`` (after its injected tokens) exactly as in a plain forward over ``[prefix, c1..cn, prompt]``.
  Positions default, like ``generate`` does, to the cumulative sum of the attention mask, so left padding is
  transparent.
The KV cache holds the prompt's own tokens only: every prompt token is computed, none is taken as cached.
Everything is undone on exit, also on error.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Iterable, Mapping, Sequence

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from kvi_engine.attention import op as attention
from kvi_engine.bank.bank import KVBank
from kvi_engine.compile.capture import attention_modules, set_attn_implementation
from kvi_engine.models import rope
from kvi_engine.plan.plan import InjectionPlan, build_plan

IMPL = "kvi"
_lock = threading.Lock()


class _State:
    __slots__ = ("plan", "model", "backend", "on_query")

    def __init__(self, plan, model, backend, on_query):
        self.plan, self.model, self.backend, self.on_query = plan, model, backend, on_query


def _kvi_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state = getattr(module, "_kvi_state", None)
    if state is None:  # model switched to "kvi" outside inject(): behave like plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    plan = state.plan
    window = kwargs.get("sliding_window")
    if window is not None and plan.num_slots + key.shape[2] > window:
        raise ValueError(f"layer {module.layer_idx} uses a sliding window of {window} tokens, shorter than the "
                         f"{plan.num_slots} injected + {key.shape[2]} own tokens: sliding windows over injected "
                         "capsules are not supported")
    if kwargs.get("softcap") is not None:
        raise ValueError("attention logit soft-capping is not supported by injection")
    if query.shape[0] != plan.batch_size:
        raise ValueError(f"batch of {query.shape[0]} rows but the injection plan has {plan.batch_size} rows "
                         "(one capsule list per row; beam search / num_return_sequences need expanded lists)")
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[2]]
    if state.on_query is not None:
        state.on_query(module.layer_idx, query)
    out, _ = attention.prefix_attention(query, key, value, mask, plan, module.layer_idx, state.model, scaling,
                                        backend=state.backend)
    return out.transpose(1, 2).contiguous(), None


_SDPA_MASK_SIGNATURE = inspect.signature(sdpa_mask)


def _kvi_mask(*args, **kwargs):
    # HF may return None (SDPA's is_causal, top-left aligned) instead of a mask. Only where q_length == kv_length is
    # that the op's own-KV default (query i sees own keys up to kv_len - q_len + i); the kernels then skip the masked
    # half of the own-KV blocks instead of reading a mask. Elsewhere -- a static cache's prefill, where kv_length is
    # the cache size, or decode -- the mask is always built.
    given = _SDPA_MASK_SIGNATURE.bind_partial(*args, **kwargs).arguments
    q_len, kv_len = given.get("q_length"), given.get("kv_length")
    if not (isinstance(q_len, int) and isinstance(kv_len, int) and q_len == kv_len):
        kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(IMPL, _kvi_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, _kvi_mask)


def _position_hook(plan: InjectionPlan, limit: int | None):
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        B, T = (ids.shape if ids is not None else emb.shape[:2])
        device = (ids if ids is not None else emb).device
        pos = kwargs.get("position_ids")
        if pos is None:
            past = kwargs.get("past_key_values")
            past_len = past.get_seq_length() if past is not None else 0
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                pos = torch.arange(past_len, past_len + T, device=device).expand(B, T)
        offset = plan.prompt_offset.to(device)
        if offset.shape[0] != B and offset.shape[0] != 1:
            raise ValueError(f"batch of {B} rows but the injection plan has {offset.shape[0]} rows")
        pos = pos + offset.unsqueeze(1)
        if limit is not None and T and int(pos.max()) >= limit:
            raise ValueError(f"injected + prompt tokens reach position {int(pos.max())}, past the model's "
                             f"{limit} positions (max_position_embeddings)")
        kwargs["position_ids"] = pos
        return args, kwargs
    return hook


@contextlib.contextmanager
def inject(model, bank: KVBank, capsule_ids: Sequence[Sequence[int]], *, layout: str = "stacked",
           layers: Iterable[int] | tuple[int, int] | None = None,
           capsule_layers: Mapping[int, Iterable[int] | tuple[int, int]] | None = None,
           backend: str | None = None, tokenizer=None, check: bool = True, on_query=None):
    """Inject ``capsule_ids[r]`` (bank capsule ids, ranked) into batch row ``r`` of every forward inside.

    ``layers``/``capsule_layers`` restrict at which layers capsules are visible (masked elsewhere).
    ``backend`` forces an attention backend (see :mod:`kvi_engine.dispatch`). With ``check`` the bank's model
    fingerprint (and, given ``tokenizer``, the tokenizer's) must match. ``on_query(layer, query)``, if given, sees
    every layer's query ``[batch, q_heads, q_len, head_dim]`` before attention (instrumentation: the bank-accuracy
    benchmark replays them). Yields the :class:`InjectionPlan`.
    """
    rope.check_repositionable(model)
    if check:
        bank.check_model(model, tokenizer)
    attention.select(next(model.parameters()).device, backend)  # a forced backend that cannot run raises now
    plan = build_plan(bank, capsule_ids, layout=layout, layers=layers, capsule_layers=capsule_layers)
    attns = attention_modules(model)
    decoder = model.get_decoder()
    with _lock:
        if any(getattr(m, "_kvi_state", None) is not None for m in attns):
            raise RuntimeError("inject() is already active on this model; nesting is not supported")
        state = _State(plan, model, backend, on_query)
        for m in attns:
            m._kvi_state = state
    hook, old = None, None
    try:
        limit = getattr(model.config, "max_position_embeddings", None)
        hook = decoder.register_forward_pre_hook(_position_hook(plan, limit), with_kwargs=True)
        old = set_attn_implementation(model, IMPL)
        yield plan
    finally:
        if hook is not None:
            hook.remove()
        if old is not None:
            set_attn_implementation(model, old)
        for m in attns:
            m._kvi_state = None
