"""KVIConnector: a vLLM KV connector (v1 API) that fills a request's leading placeholder tokens with capsule KV.

    LLM(model_dir, kv_transfer_config=kv_transfer_config("/path/to/bank"))      # kvi_engine.integrations.vllm

Scheduler side (vLLM's engine-core process): a request whose ``kv_transfer_params["kvi"]`` names capsules is checked
against the bank (ids, bank state, placeholder count ``N``, prompt, cache salt); the ``N - cached`` placeholders
vLLM's prefix cache does not already hold are reported as externally computed (``get_num_new_matched_tokens``).
After block allocation one :class:`CapsuleLoad` per request (capsule ids, first token to write, ``N``, block ids)
goes to the workers in the step's metadata: nothing else crosses, each worker opens the same bank itself.

Worker side: ``start_load_kv`` (before the forward, synchronous) builds the capsule set's plan, and per layer
gathers its KV (dequantised, keys rotated to their positions: :mod:`.kv`) and writes it through the attention
backend's own cache write, ``impl.do_kv_cache_update`` (``cpu_attn_reshape_and_cache`` on the CPU,
``reshape_and_cache_flash`` on FlashAttention / FlashInfer), so cache layouts and fp8 caches are vLLM's business.

A request that fails the checks still gets one block allocated; its worker reports that block as a load error and
vLLM (``kv_load_failure_policy="fail"``, its default; "recompute" is refused) finishes the request with
``finish_reason="error"`` instead of running it without its capsules; raising in a hook would stop the engine.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole

from kvi_engine.bank.bank import KVBank
from kvi_engine.integrations.vllm.check import check_bank_model
from kvi_engine.integrations.vllm.config import DEFAULT_BANK, PARAMS_KEY
from kvi_engine.integrations.vllm.kv import injected_kv, local_heads
from kvi_engine.integrations.vllm.layout import bank_identity, cache_salt, capsule_plan

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger("vllm.kvi")


@dataclass(slots=True)
class CapsuleLoad:
    """One request's write, scheduler -> worker (plain values: picklable for multi-process executors)."""
    req_id: str
    bank_name: str
    capsule_ids: list[int]
    start: int            # first injected token to write (the ones before are vLLM prefix-cache hits)
    stop: int             # N, the number of injected tokens
    block_ids: list[int]  # the request's blocks (KV cache group 0)
    error: str | None = None  # set: write nothing, report the request's block as failed


@dataclass
class KVIConnectorMetadata(KVConnectorMetadata):
    loads: list[CapsuleLoad] = field(default_factory=list)


class KVIConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        tc = self._kv_transfer_config
        extra = tc.kv_connector_extra_config or {}
        paths = dict(extra.get("banks") or {})
        if extra.get("bank"):
            paths[DEFAULT_BANK] = extra["bank"]
        if not paths:
            raise ValueError("KVIConnector needs kv_connector_extra_config={'bank': PATH} or {'banks': {name: PATH}} "
                             "(kvi_engine.integrations.vllm.kv_transfer_config builds it)")
        if getattr(tc, "kv_load_failure_policy", "fail") != "fail":
            raise ValueError("KVIConnector needs kv_load_failure_policy='fail': with 'recompute' a request whose "
                             "capsules cannot be loaded would run without them")
        if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) > 1:
            raise ValueError("KVIConnector supports models with one KV cache group (full attention in every layer); "
                             f"this one has {len(kv_cache_config.kv_cache_groups)}")
        self._banks = {name: KVBank.open(p) for name, p in paths.items()}  # one snapshot for the engine's life
        self._block_size = vllm_config.cache_config.block_size
        if role == KVConnectorRole.SCHEDULER:
            for bank in self._banks.values():
                check_bank_model(bank, vllm_config)
        self._model_dtype = vllm_config.model_config.dtype
        # scheduler state
        self._matched: dict[str, tuple[int, str, list[int], str | None]] = {}  # req -> (N, bank, ids, error)
        self._pending: dict[str, CapsuleLoad] = {}
        self._receipts: dict[str, dict] = {}
        # worker state
        self._layers: dict[str, int] = {}  # attention layer name -> bank layer
        self._failed_blocks: set[int] = set()
        self._trace = extra.get("trace_file")  # one JSON line per write or failed request

    # ==== scheduler side ========================================================================================
    def _validate(self, request: "Request"):
        """``(plan, None)`` for a valid capsule request, ``(None, reason)`` for a bad one, ``(None, None)`` for a
        request without capsules."""
        spec = (request.kv_transfer_params or {}).get(PARAMS_KEY)
        if spec is None:
            return None, None
        if not isinstance(spec, dict):
            return None, f"kv_transfer_params[{PARAMS_KEY!r}] must be an object, got {type(spec).__name__}"
        name = spec.get("bank_name", DEFAULT_BANK)
        bank = self._banks.get(name)
        if bank is None:
            return None, f"no bank named {name!r} is served (served: {sorted(self._banks)})"
        try:
            plan = capsule_plan(bank, spec.get("capsule_ids"))
        except (IndexError, KeyError, TypeError, ValueError) as e:
            return None, f"capsule ids {spec.get('capsule_ids')!r}: {e.args[0] if e.args else e}"
        n, ids = plan.num_slots, plan.capsule_ids[0]
        if spec.get("bank") != bank_identity(bank):
            return None, (f"the request was built for bank state {spec.get('bank')}, the engine serves "
                          f"{bank_identity(bank)} ({bank.root}); rebuild the request or restart the engine")
        if spec.get("num_tokens") != n:
            return None, f"the request claims {spec.get('num_tokens')} injected tokens, its capsules have {n}"
        prompt = request.prompt_token_ids or []
        if len(prompt) <= n:
            return None, f"the prompt ({len(prompt)} tokens) must be longer than its {n} placeholders"
        ph = spec.get("placeholder_id", 0)
        if any(t != ph for t in prompt[:n]):
            return None, f"the first {n} prompt tokens must be the placeholder id {ph}"
        if request.cache_salt != cache_salt(bank, ids):
            return None, ("cache_salt missing or wrong: without its capsule set's salt vLLM's prefix cache would "
                          "serve one set's KV to another (build requests with capsule_request)")
        if request.skip_reading_prefix_cache:
            return None, "prompt_logprobs (skip_reading_prefix_cache) bypasses KV connectors: capsules not injected"
        return plan, None

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        plan, err = self._validate(request)
        rid = request.request_id
        if err is not None:
            # Claim one token so that a block gets allocated: the worker reports it as a load error and vLLM fails
            # the request (raising here would stop the engine; claiming nothing would run it without capsules).
            if request.num_tokens - 1 <= num_computed_tokens:  # nothing left to claim (prompt_logprobs lands here)
                logger.error("kvi: request %s not injected: %s", rid, err)
                self._receipts[rid] = _receipt(0, [], DEFAULT_BANK, 0, err)
                return 0, False
            self._matched[rid] = (num_computed_tokens + 1, DEFAULT_BANK, [], err)
            return 1, False
        if plan is None:
            return 0, False
        spec = request.kv_transfer_params[PARAMS_KEY]
        self._matched[rid] = (plan.num_slots, spec.get("bank_name", DEFAULT_BANK), plan.capsule_ids[0], None)
        return max(0, plan.num_slots - num_computed_tokens), False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        matched = self._matched.pop(request.request_id, None)
        if matched is None:
            return
        stop, bank_name, capsule_ids, err = matched
        # The receipt comes back with the request's output (RequestOutput.kv_transfer_params, the HTTP response).
        self._receipts[request.request_id] = _receipt(0 if err else stop, capsule_ids, bank_name,
                                                      0 if err else num_external_tokens, err)
        if num_external_tokens <= 0:
            if err is not None:
                logger.error("kvi: request %s not injected: %s", request.request_id, err)
            return
        # the scheduler may trim a local prefix-cache hit; the external tokens always end at `stop`
        self._pending[request.request_id] = CapsuleLoad(request.request_id, bank_name, capsule_ids,
                                                        stop - num_external_tokens, stop,
                                                        list(blocks.get_block_ids()[0]), err)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = KVIConnectorMetadata(list(self._pending.values()))
        self._pending.clear()
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._pending.pop(request.request_id, None)
        self._matched.pop(request.request_id, None)
        receipt = self._receipts.pop(request.request_id, None)
        return False, ({PARAMS_KEY: receipt} if receipt is not None else None)

    # ==== worker side ===========================================================================================
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        names = sorted(kv_caches, key=_layer_index)
        for bank in self._banks.values():
            if len(names) != bank.num_layers:
                raise ValueError(f"the model has {len(names)} attention layers with a KV cache, bank {bank.root} "
                                 f"has {bank.num_layers}")
        self._layers = {n: _layer_index(n) for n in names}

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVIConnectorMetadata)
        for load in meta.loads:
            if load.error is None:
                try:
                    t = time.perf_counter()
                    self._write(load, forward_context)
                    self._log({"req_id": load.req_id, "bank": load.bank_name, "start": load.start,
                               "stop": load.stop, "seconds": time.perf_counter() - t})
                    continue
                except Exception as e:  # noqa: BLE001 -- whatever fails must fail the request, not the engine
                    load.error = f"{type(e).__name__}: {e}"
            logger.error("kvi: failing request %s: %s", load.req_id, load.error)
            self._log({"req_id": load.req_id, "error": load.error})
            self._failed_blocks.add(load.block_ids[load.start // self._block_size])

    def _log(self, row: dict) -> None:
        if self._trace:
            with open(self._trace, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _write(self, load: CapsuleLoad, forward_context: "ForwardContext") -> None:
        plan = capsule_plan(self._banks[load.bank_name], load.capsule_ids)
        if load.stop != plan.num_slots:
            raise ValueError(f"the scheduler asked for {load.stop} injected tokens, the capsules have {plan.num_slots}")
        pos = torch.arange(load.start, load.stop)
        blocks = torch.tensor(load.block_ids, dtype=torch.long)
        slots = blocks[pos // self._block_size] * self._block_size + pos % self._block_size
        tp = None
        for name, bank_layer in self._layers.items():
            layer = forward_context.no_compile_layers[name]
            if getattr(layer, "kv_sharing_target_layer_name", None):
                continue  # reads another layer's cache, written under that layer's name
            kv_cache = layer.kv_cache  # the tensor vLLM's own cache write targets (bound to the layer at init)
            dtype = _activation_dtype(layer, self._model_dtype)
            k, v = injected_kv(plan, bank_layer, dtype, kv_cache.device, load.start, load.stop)
            num_local = getattr(layer, "num_kv_heads", k.shape[1])
            if num_local != k.shape[1]:
                if tp is None:
                    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
                    tp = (get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
                k, v = local_heads(k, num_local, *tp), local_heads(v, num_local, *tp)
            layer.impl.do_kv_cache_update(layer, k, v, kv_cache, slots.to(kv_cache.device))

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._failed_blocks = self._failed_blocks, set()
        return out

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv wrote every layer already

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        return  # a consumer: nothing is saved

    def wait_for_save(self):
        return


def _receipt(injected: int, capsule_ids: list[int], bank_name: str, written: int, err: str | None) -> dict:
    return {"injected_tokens": injected, "capsule_ids": capsule_ids, "bank_name": bank_name,
            "written_by_connector": written, "from_prefix_cache": injected - written if injected else 0,
            "error": err}


def _layer_index(name: str) -> int:
    nums = [int(p) for p in name.split(".") if p.isdigit()]
    if len(nums) != 1:
        raise ValueError(f"cannot tell the layer index of attention layer {name!r}")
    return nums[0]


def _activation_dtype(layer, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype the model computes keys in: what the cache write takes as input (it quantises to fp8 itself)."""
    dt = getattr(getattr(layer, "impl", None), "dtype", None) or getattr(layer, "dtype", None)
    return dt if isinstance(dt, torch.dtype) else model_dtype
