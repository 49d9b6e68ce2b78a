"""The model thread of ``kvi serve``: continuous batching with a capsule set per row.

One thread owns the model for the server's life (the injection stays attached; only its plan changes). Each
iteration it

1. admits waiting requests (FIFO) while the batch has rows free, up to ``prefill_tokens`` prompt tokens, all of the
   bank generation the batch is on (a request pinned to a newer generation waits until the batch drains: the batch
   then moves to it);
2. prefills the admitted requests as one left-padded batch under their own plan (every prompt token computed),
   samples each choice's first token, and merges their KV into the running batch (``n`` > 1: the request's cache
   rows are repeated, one per choice);
3. runs one decode step for every running row under the batch plan (rebuilt from the rows' capsule lists whenever
   rows joined or left: cheap numpy), samples with each row's own parameters, and drops finished or abandoned rows.

No lock serialises requests: HTTP handlers only enqueue and read events. ``max_batch=1`` with ``serial=True`` is
the one-request-at-a-time server the load benchmark compares against.
"""
from __future__ import annotations

import collections
import threading
import time

import torch
from transformers import DynamicCache

from kvi_engine.generate.inject import attach
from kvi_engine.plan.plan import build_plan
from kvi_engine.serve.attribution import Collector
from kvi_engine.serve.batch import Row, RunningBatch
from kvi_engine.serve.request import Request
from kvi_engine.serve.sampling import advance_text, choose, generator


class QueueFull(RuntimeError):
    """The waiting queue is full (HTTP 429 with Retry-After)."""


class ShuttingDown(RuntimeError):
    """The server is draining (HTTP 503)."""


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class Scheduler:
    def __init__(self, model, tokenizer, bank, *, max_batch: int = 32, max_queue: int = 256,
                 prefill_tokens: int = 2048, backend: str | None = None, layout: str = "stacked", metrics=None,
                 serial: bool = False):
        self.model, self.tokenizer, self.bank = model, tokenizer, bank
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.backend, self.layout, self.metrics, self.serial = backend, layout, metrics, serial
        self.device = next(model.parameters()).device
        self.eos = _eos_ids(model, tokenizer)
        self.num_layers = model.config.num_hidden_layers
        self.batch = RunningBatch()
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._plan_version = -1
        self.steps = 0

    # ---- the HTTP side

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue = {self.max_queue})")
            self._waiting.append(request)
            self._cond.notify()
        self._gauge()

    def cancel(self, request: Request) -> None:
        """The client went away: its rows leave the batch at the next step (or it never enters)."""
        request.cancelled = True
        with self._cond:
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvi-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything admitted or waiting, then end the thread (new submissions are refused)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the model thread

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))
            self.metrics.running.set(len(self.batch))

    def _run(self) -> None:
        plan0 = build_plan(self.bank, [[]], layout=self.layout)
        with torch.no_grad(), attach(self.model, plan0, backend=self.backend) as self.injection:
            while True:
                with self._cond:
                    while not self._waiting and not self.batch.rows and not self._stopping:
                        self._cond.wait(0.5)
                    if self._stopping and not self._waiting and not self.batch.rows:
                        return
                    admitted = self._admit()
                self._gauge()
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self.batch.rows:
                        self._decode()
                except Exception as e:  # noqa: BLE001 -- a failed forward fails its requests, not the server
                    self._fail(admitted + [r.request for r in self.batch.rows], f"{type(e).__name__}: {e}")
                    self.batch = RunningBatch()
                self._gauge()

    def _admit(self) -> list[Request]:
        out: list[Request] = []
        rows, tokens = len(self.batch), 0
        while self._waiting:
            r = self._waiting[0]
            if r.cancelled:
                self._waiting.popleft()
                self._finish_cancelled(r)
                continue
            if r.bank is not self.bank:
                if rows or out:
                    break  # a newer bank generation: wait until this batch has drained
                self.bank = r.bank
                if self.metrics is not None:
                    self.metrics.generation.set(self.bank.generation)
            if self.serial and (rows or out):
                break
            if (rows or out) and rows + r.params.n > self.max_batch:
                break
            if out and tokens + len(r.prompt_ids) > self.prefill_tokens:
                break
            out.append(self._waiting.popleft())
            rows += r.params.n
            tokens += len(r.prompt_ids)
        return out

    def _collector(self, requests) -> Collector | None:
        return Collector(self.num_layers) if any(r.attribution for r in requests) else None

    def _forward(self, plan, collector, **inputs):
        self.injection.plan = plan
        self.injection.on_attention = collector
        return self.model(**inputs).logits[:, -1]

    def _prefill(self, requests: list[Request]) -> None:
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        plan = build_plan(self.bank, [r.capsule_ids for r in requests], layout=self.layout)
        collector = self._collector(requests)
        cache = DynamicCache()
        logits = self._forward(plan, collector, input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                               past_key_values=cache, use_cache=True, logits_to_keep=1)
        masses = collector.take() if collector is not None else None
        if self.metrics is not None:
            self.metrics.prefill_size.observe(len(requests))
        now = time.perf_counter()
        rows, source = [], []
        for i, r in enumerate(requests):
            r.t_first = now
            if self.metrics is not None:
                self.metrics.ttft.observe(r.ttft_s)
            for c in r.choices:
                rows.append(Row(r, c, generator(r.params, c.index)))
                source.append(i)
        tokens = choose(logits[source], [(row.request.params, row.generator) for row in rows])
        keep = [j for j, (row, t) in enumerate(zip(rows, tokens))
                if self._accept(row, t, None if masses is None else masses[:, source[j]])]
        for layer in cache.layers:  # one cache row per choice, only for rows still generating
            layer.keys = layer.keys[[source[j] for j in keep]]
            layer.values = layer.values[[source[j] for j in keep]]
        self.batch.join([rows[j] for j in keep], cache, mask[[source[j] for j in keep]])

    def _decode(self) -> None:
        alive = [i for i, row in enumerate(self.batch.rows) if not row.request.cancelled]
        for row in self.batch.rows:
            if row.request.cancelled:
                self._finish_cancelled(row.request)
        self.batch.keep(alive)
        if not self.batch.rows:
            return
        if self._plan_version != self.batch.version:
            self._plan = build_plan(self.bank, [row.capsule_ids for row in self.batch.rows], layout=self.layout)
            self._plan_version = self.batch.version
        requests = [row.request for row in self.batch.rows]
        collector = self._collector(requests)
        logits = self._forward(self._plan, collector, **self.batch.step_inputs(self.device))
        masses = collector.take() if collector is not None else None
        self.steps += 1
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(self.batch))
        tokens = choose(logits, [(row.request.params, row.generator) for row in self.batch.rows])
        keep = [i for i, (row, t) in enumerate(zip(self.batch.rows, tokens))
                if self._accept(row, t, None if masses is None else masses[:, i])]
        self.batch.keep(keep)

    def _accept(self, row: Row, token: int, mass) -> bool:
        """Record ``token`` for ``row``; emit its text; True while the row keeps generating."""
        r, c = row.request, row.choice
        finish = None
        if token in self.eos:
            finish = "stop"
        else:
            c.tokens.append(token)
            if mass is not None and r.attribution:
                c.attribution.append(mass[:, : 1 + len(r.capsule_ids)].tolist())
            if self.metrics is not None:
                self.metrics.tokens.inc()
            if len(c.tokens) >= r.params.max_tokens:
                finish = "length"
        delta, stopped = advance_text(self.tokenizer, c, r.params.stop, final=finish is not None)
        if stopped:
            finish = "stop"
        if delta or (finish is None and not stopped):
            # one chunk per generated token, even while its text is held back (an incomplete UTF-8 character, a
            # possible stop sequence): a streaming client sees every token arrive (client-side TTFT)
            r.emit(("delta", c.index, delta))
        if finish is None:
            return True
        c.finish_reason = finish
        r.emit(("finish", c.index, finish))
        if r.done:
            r.t_done = time.perf_counter()
            if self.metrics is not None:
                self.metrics.e2e.observe(r.t_done - r.t_submit)
                for ch in r.choices:
                    if len(ch.tokens) > 1:
                        self.metrics.tpot.observe((r.t_done - r.t_first) / (len(ch.tokens) - 1))
            r.emit(("done",))
        return False

    def _finish_cancelled(self, r: Request) -> None:
        for c in r.choices:
            if c.finish_reason is None:
                c.finish_reason = "cancelled"
        r.t_done = time.perf_counter()

    def _fail(self, requests, message: str) -> None:
        for r in dict.fromkeys(requests):
            if not r.done:
                r.error = message
                r.emit(("error", message))
