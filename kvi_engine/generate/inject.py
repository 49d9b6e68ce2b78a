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


class Injection:
    """What the patched model reads on every forward: the plan (swappable between forwards: ``kvi serve`` sets a new
    batch plan whenever requests join or leave), the backend, the instrumentation hooks, and the expansion factor of
    the ``generate`` call in progress (``num_beams`` / ``num_return_sequences`` repeat every row in place)."""
    __slots__ = ("plan", "model", "backend", "on_query", "on_attention", "times")

    def __init__(self, plan, model, backend=None, on_query=None, on_attention=None):
        self.plan, self.model, self.backend = plan, model, backend
        self.on_query, self.on_attention, self.times = on_query, on_attention, 1

    def plan_for(self, batch: int) -> InjectionPlan:
        """The plan for a forward over ``batch`` rows: the plan itself, or, inside a ``generate`` call that expanded
        the batch, the plan with every row repeated the same way (built once, kept in the plan's cache)."""
        plan = self.plan
        if batch == plan.batch_size:
            return plan
        if self.times > 1 and batch == plan.batch_size * self.times:
            return plan.cached(("expand", self.times), lambda: plan.expand(self.times))
        raise ValueError(f"batch of {batch} rows but the injection plan has {plan.batch_size} rows (one capsule list "
                         "per row; generate's num_beams / num_return_sequences expand it themselves)")


def _kvi_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    state = getattr(module, "_kvi_state", None)
    if state is None:  # model switched to "kvi" outside inject(): behave like plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    plan = state.plan_for(query.shape[0])
    window = kwargs.get("sliding_window")
    if window is not None and plan.num_slots + key.shape[2] > window:
        raise ValueError(f"layer {module.layer_idx} uses a sliding window of {window} tokens, shorter than the "
                         f"{plan.num_slots} injected + {key.shape[2]} own tokens: sliding windows over injected "
                         "capsules are not supported")
    if kwargs.get("softcap") is not None:
        raise ValueError("attention logit soft-capping is not supported by injection")
    mask = attention_mask
    if mask is not None and mask.dim() == 4 and mask.shape[3] != key.shape[2]:
        mask = mask[:, :, :, : key.shape[2]]
    if state.on_query is not None:
        state.on_query(module.layer_idx, query)
    if query.shape[2] == 1 and (mask is None or mask.dtype == torch.bool):
        # Decode: the layer's prepared step where the general path would run the C++ decode kernel (built once per
        # plan; False caches "not here"). Its key starts with the layer, so plan.forget drops it with the gather.
        layer = module.layer_idx
        step = plan.cached((layer, "decode_step", query.dtype, query.device),
                           lambda: attention.decode_step(plan, layer, state.model, query.dtype, query.device,
                                                         state.backend) or False)
        if step and state.on_attention is None:
            return step(query, key, value, mask, scaling).transpose(1, 2).contiguous(), None
        if step:  # attribution: the per-segment lse from the same exponentials
            out, lse, seg = step(query, key, value, mask, scaling, capsule_lse=True, segments=plan.segments)
            state.on_attention(layer, plan, seg, lse)
            return out.transpose(1, 2).contiguous(), None
    if state.on_attention is not None:  # per-capsule attention mass of each row's last query (attribution)
        layer = module.layer_idx
        if query.shape[2] == 1:
            out, lse, seg = attention.prefix_attention(query, key, value, mask, plan, layer, state.model, scaling,
                                                       backend=state.backend, capsule_lse=True)
        else:  # prefill: only the last position chooses a token; one more pass over the injected keys for it
            out, lse = attention.prefix_attention(query, key, value, mask, plan, layer, state.model, scaling,
                                                  backend=state.backend, return_lse=True)
            seg, lse = attention.injected_lse(query[:, :, -1:], plan, layer, state.model, key.dtype, scaling), \
                lse[:, :, -1:]
        state.on_attention(layer, plan, seg, lse)
    else:
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


def _position_hook(state: Injection, limit: int | None):
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
        pos = pos + state.plan_for(B).prompt_offset.to(device).unsqueeze(1)
        if limit is not None and T and int(pos.max()) >= limit:
            raise ValueError(f"injected + prompt tokens reach position {int(pos.max())}, past the model's "
                             f"{limit} positions (max_position_embeddings)")
        kwargs["position_ids"] = pos
        return args, kwargs
    return hook


def _expansion_recorder(state: Injection, expand):
    # generate() repeats every row in place (repeat_interleave) by max(num_beams, num_return_sequences) before the
    # first forward; recording the factor here lets the plan expand the same way, and only inside such a call.
    def recorder(*args, **kwargs):
        state.times = max(int(kwargs.get("expand_size", args[0] if args else 1)), 1)
        return expand(*args, **kwargs)
    return recorder


def _generate_scope(state: Injection, generate):
    # the expansion holds for one generate() call: afterwards a forward over more rows than the plan is an error again
    def scoped(*args, **kwargs):
        try:
            return generate(*args, **kwargs)
        finally:
            state.times = 1
    return scoped


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
    benchmark replays them). Yields the :class:`InjectionPlan`. Inside, ``generate`` with ``num_beams`` or
    ``num_return_sequences`` > 1 works: the plan's rows are repeated the way ``generate`` repeats the batch.
    """
    rope.check_repositionable(model)
    if check:
        bank.check_model(model, tokenizer)
    attention.select(next(model.parameters()).device, backend)  # a forced backend that cannot run raises now
    plan = build_plan(bank, capsule_ids, layout=layout, layers=layers, capsule_layers=capsule_layers)
    with attach(model, plan, backend=backend, on_query=on_query):
        yield plan


@contextlib.contextmanager
def attach(model, plan: InjectionPlan, *, backend: str | None = None, on_query=None, on_attention=None):
    """Patch ``model`` to inject ``plan`` (no checks: :func:`inject` is the public entry point) and yield the
    :class:`Injection` its forwards read; assigning ``injection.plan`` between forwards swaps the plan (a resident
    server does, per batch). ``on_attention(layer, plan, capsule_lse, lse)``, if given, receives at every layer the
    log-sum-exp of each row's last query over each injected segment (``[batch, q_heads, 1, 1 + max capsules]``:
    the shared prefix, then the row's capsules in plan order) and over all keys (``[batch, q_heads, 1]``): the
    query whose logits choose the next token (attribution). Undone on exit."""
    attns = attention_modules(model)
    decoder = model.get_decoder()
    with _lock:
        if any(getattr(m, "_kvi_state", None) is not None for m in attns):
            raise RuntimeError("inject() is already active on this model; nesting is not supported")
        state = Injection(plan, model, backend, on_query, on_attention)
        for m in attns:
            m._kvi_state = state
    hook, old = None, None
    try:
        limit = getattr(model.config, "max_position_embeddings", None)
        hook = decoder.register_forward_pre_hook(_position_hook(state, limit), with_kwargs=True)
        model._expand_inputs_for_generation = _expansion_recorder(state, model._expand_inputs_for_generation)
        model.generate = _generate_scope(state, model.generate)
        old = set_attn_implementation(model, IMPL)
        yield state
    finally:
        model.__dict__.pop("_expand_inputs_for_generation", None)
        model.__dict__.pop("generate", None)
        if hook is not None:
            hook.remove()
        if old is not None:
            set_attn_implementation(model, old)
        for m in attns:
            m._kvi_state = None
