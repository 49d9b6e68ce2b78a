"""What the placeholder tokens of a vLLM request stand for: the stacked layout of a capsule set, and the cache salt
that keys vLLM's prefix cache to it.

The layout is the engine's own plan (:func:`kvi_engine.plan.plan.build_plan`, one row, ``stacked``): the shared
prefix at positions ``0..p-1``, the capsules back to back in the given order, the prompt from
``N = p + sum(lengths)``. vLLM gives a request's leading ``N`` placeholder tokens exactly those positions and the
prompt the ones after, so writing the plan's slot ``i`` at cache position ``i`` is the whole injection (capsules not
attending to each other is already in the bank: each was compiled alone).
"""
from __future__ import annotations

import hashlib
import json

from kvi_engine.plan.plan import InjectionPlan, build_plan


def capsule_plan(bank, capsule_ids) -> InjectionPlan:
    """The one-row stacked plan of ``capsule_ids``; the planner refuses out-of-range, removed and repeated ids
    (IndexError / KeyError / ValueError naming the id). ``plan.num_slots`` is the number of placeholders."""
    if isinstance(capsule_ids, (str, bytes, int)):
        raise TypeError(f"capsule_ids must be a list of capsule ids, got {capsule_ids!r}")
    return build_plan(bank, [list(capsule_ids)], layout="stacked")


def bank_identity(bank) -> dict:
    """What a capsule's stored KV depends on: the bank's segments (compiling, updating or re-compiling makes new
    ones) and its generation. Requests carry it, so an engine serving another state of the bank refuses them."""
    return {"segments": [s.segment_id for s in bank.segments], "generation": int(bank.generation)}


def cache_salt(bank, capsule_ids) -> str:
    """vLLM ``cache_salt`` of a capsule set: requests whose placeholders stand for different KV never share
    prefix-cache blocks; the same set from the same bank state does (a prefix-cache hit)."""
    key = json.dumps({"bank": bank_identity(bank), "ids": [int(c) for c in capsule_ids]}, sort_keys=True)
    return "kvi-" + hashlib.sha256(key.encode()).hexdigest()[:32]
