"""The HTTP API of ``kvi serve`` (FastAPI): OpenAI-compatible completions and chat completions (streaming as SSE),
the whole query pipeline at ``/v1/answer``, the bank, health, Prometheus metrics and the web page at ``/``.

Handlers validate, tokenize and enqueue; the scheduler's thread generates; events come back through an asyncio
queue. Errors follow OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 names the field at
fault (``param``), 429 / 503 carry ``Retry-After``.
Not ``from __future__ import annotations``: FastAPI resolves the handlers' annotations at definition time, and
the FastAPI types are imported inside :func:`build_app` (the ``serve`` extra is imported lazily).
"""
import asyncio
import json
import re
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from kvi_engine.generate.engine import encode_prompt
from kvi_engine.plan.plan import build_plan
from kvi_engine.serve.attribution import summarise
from kvi_engine.serve.request import Request
from kvi_engine.serve.scheduler import QueueFull, ShuttingDown
from kvi_engine.serve.schemas import AnswerRequest, ChatRequest, CompletionRequest

STATIC = Path(__file__).with_name("static")
_ROW0 = re.compile(r"^capsule_ids\[0\]:? ?")  # the plan names the row; a request has one


class BadRequest(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class ServeState:
    model: object
    tokenizer: object
    banks: object         # BankWatcher
    scheduler: object     # Scheduler
    answerer: object      # Answerer
    metrics: object       # Metrics
    model_name: str
    max_prompt_tokens: int = 8192
    default_max_tokens: int = 16
    retry_after_s: int = 1


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", headers=None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


def _param(loc) -> str:
    parts = [str(x) for x in loc if x != "body"]
    return ".".join(parts) or "body"


def build_app(state: ServeState):
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        yield
        await run_in_threadpool(state.scheduler.stop)  # SIGTERM: uvicorn has let in-flight requests finish

    app = FastAPI(title="kvi serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def count(request: HTTPRequest, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        e = exc.errors()[0]
        if e.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {e.get('msg')} (at {_param(e.get('loc', ()))})", "body")
        param = _param(e.get("loc", ()))
        what = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid value")
        return _error(400, f"{param}: {what}", param)

    @app.exception_handler(BadRequest)
    async def bad(request, exc: BadRequest):
        return _error(400, str(exc), exc.param)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        s = state.scheduler
        return {"status": "ok", "generation": s.bank.generation, "running": len(s.batch), "waiting": s.queue_depth,
                "steps": s.steps}

    @app.get("/metrics")
    async def metrics():
        body, kind = state.metrics.render()
        return Response(body, media_type=kind)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "owned_by": "kvi-engine"}]}

    @app.get("/v1/bank")
    async def bank():
        b = state.banks.latest()
        d = b.describe()
        return {"generation": b.generation, "num_capsules": b.num_capsules, "live_capsules": d["live_capsules"],
                "num_tokens": b.num_tokens, "serving_generation": state.scheduler.bank.generation, "header": d}

    # ---- generation

    def _capsules(bank, ids: list[int]) -> list[int]:
        try:
            build_plan(bank, [ids])
        except (IndexError, KeyError, TypeError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise BadRequest("kvi.capsule_ids", "kvi.capsule_ids: " + _ROW0.sub("", str(msg))) from None
        return list(ids)

    def _check_length(bank, prompt_ids, capsule_ids, max_tokens, field):
        if len(prompt_ids) > state.max_prompt_tokens:
            raise BadRequest(field, f"{field}: {len(prompt_ids):,} tokens, more than the server's max_prompt_tokens "
                                    f"= {state.max_prompt_tokens:,}")
        if not prompt_ids:
            raise BadRequest(field, f"{field}: encodes to no tokens")
        limit = getattr(state.model.config, "max_position_embeddings", None)
        # where the plan puts the prompt (stacked: after every capsule), as KVIEngine.check_lengths counts it:
        # generating ``new`` tokens feeds ``new - 1`` back, so the last position is start + prompt + new - 2
        start = int(build_plan(bank, [capsule_ids], layout=state.scheduler.layout).prompt_offset[0])
        if limit and start + len(prompt_ids) > limit:
            raise BadRequest(field, f"{field}: {start:,} injected + {len(prompt_ids):,} prompt tokens exceed the "
                                    f"model's {limit:,} positions")
        if limit and start + len(prompt_ids) + max_tokens - 1 > limit:
            raise BadRequest("max_tokens", f"max_tokens: {start:,} injected + {len(prompt_ids):,} prompt + "
                                           f"{max_tokens:,} new tokens exceed the model's {limit:,} positions")

    def _submit(request: Request) -> None:
        try:
            state.scheduler.submit(request)
        except QueueFull as e:
            raise _Overloaded(429, str(e)) from None
        except ShuttingDown as e:
            raise _Overloaded(503, str(e)) from None

    class _Overloaded(Exception):
        def __init__(self, status, message):
            super().__init__(message)
            self.status = status

    @app.exception_handler(_Overloaded)
    async def overloaded(request, exc: _Overloaded):
        return _error(exc.status, str(exc), None, "overloaded", {"Retry-After": str(state.retry_after_s)})

    async def _events(http: HTTPRequest, req: Request):
        """The request's events until it is done; a client that disconnects cancels it (frees its rows)."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(req.events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        state.scheduler.cancel(req)
                        return
                    continue
                yield event
                if event[0] in ("done", "error"):
                    return
        finally:
            if not req.done:
                state.scheduler.cancel(req)

    def _new_request(prompt_ids, capsule_ids, bank, params, attribution) -> Request:
        req = Request(prompt_ids, capsule_ids, bank, params, attribution=attribution)
        req.loop, req.events = asyncio.get_running_loop(), asyncio.Queue()
        return req

    def _kvi_extra(req: Request, trace=None) -> dict:
        extra = {"capsule_ids": req.capsule_ids, "generation": req.bank.generation,
                 "ttft_ms": None if req.ttft_s is None else round(1e3 * req.ttft_s, 3),
                 "token_ids": [c.tokens for c in req.choices]}
        if req.attribution:
            extra["attribution"] = [summarise(c.attribution, req.capsule_ids, state.scheduler.num_layers)
                                    for c in req.choices]
        if trace is not None:
            extra["trace"] = trace
        return extra

    async def _generate(http: HTTPRequest, body, chat: bool):
        bank = state.banks.latest()
        opts = body.kvi
        field = "messages" if chat else "prompt"
        text = [m.model_dump() for m in body.messages] if chat else body.prompt
        capsule_ids, trace = [], None
        if opts is not None and opts.retrieve:
            try:
                m = state.answerer.method(opts.method)
            except ValueError as e:
                raise BadRequest("kvi.method", f"kvi.method: {e}") from None
            question = body.messages[-1].content if chat else body.prompt
            found, evidence, kv, _ = await run_in_threadpool(state.answerer.prepare, bank, question, m)
            capsule_ids = list(kv)
            context = "".join(f"- {e.strip()}\n" for e in evidence if e.strip())
            if context and chat:
                text = [{"role": "system", "content": f"Context:\n{context}"}] + text
            elif context:
                text = f"Context:\n{context}{text}"
            trace = {"entities": found.entities, "intent": list(found.intent), "evidence": evidence,
                     "injected": capsule_ids}
        elif opts is not None and opts.capsule_ids is not None:
            capsule_ids = _capsules(bank, opts.capsule_ids)
        params = body.sampling(state.default_max_tokens)
        prompt_ids = encode_prompt(state.tokenizer, text, prefix=bank.prefix_token_ids)
        _check_length(bank, prompt_ids, capsule_ids, params.max_tokens, field)
        req = _new_request(prompt_ids, capsule_ids, bank, params, opts is not None and opts.attribution)
        _submit(req)
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": req.id, "created": int(req.created), "model": state.model_name}
        usage = lambda: {"prompt_tokens": len(prompt_ids),  # noqa: E731
                         "completion_tokens": sum(len(c.tokens) for c in req.choices),
                         "total_tokens": len(prompt_ids) + sum(len(c.tokens) for c in req.choices)}

        def piece(index, delta, finish):
            if chat:
                d = {"content": delta} if delta is not None else {}
                return {"index": index, "delta": d, "finish_reason": finish, "logprobs": None}
            return {"index": index, "text": delta or "", "finish_reason": finish, "logprobs": None}

        if body.stream:
            async def sse():
                if chat:
                    for c in req.choices:
                        yield _sse({**head, "object": kind + ".chunk",
                                    "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None, "logprobs": None}]})
                async for ev in _events(http, req):
                    if ev[0] == "delta":
                        yield _sse({**head, "object": kind + ".chunk" if chat else kind,
                                    "choices": [piece(ev[1], ev[2], None)]})
                    elif ev[0] == "finish":
                        yield _sse({**head, "object": kind + ".chunk" if chat else kind,
                                    "choices": [piece(ev[1], None if chat else "", ev[2])]})
                    elif ev[0] == "error":
                        yield _sse({"error": {"message": ev[1], "type": "server_error", "param": None,
                                              "code": 500}})
                        return
                yield _sse({**head, "object": kind + ".chunk" if chat else kind, "choices": [], "usage": usage(),
                            "kvi": _kvi_extra(req, trace)})
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        async for ev in _events(http, req):
            if ev[0] == "error":
                return _error(500, ev[1], None, "server_error")
        if not req.done:  # the client left
            return Response(status_code=499)
        if chat:
            choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason, "logprobs": None} for c in req.choices]
        else:
            choices = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                       for c in req.choices]
        return JSONResponse({**head, "object": kind, "choices": choices, "usage": usage(),
                             "kvi": _kvi_extra(req, trace)})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        return await _generate(http, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HTTPRequest):
        return await _generate(http, body, chat=True)

    @app.post("/v1/answer")
    async def answer(body: AnswerRequest, http: HTTPRequest):
        try:
            m = state.answerer.method(body.method)
        except ValueError as e:
            raise BadRequest("method", f"method: {e}") from None
        bank = state.banks.latest()
        t0 = time.perf_counter()
        found, evidence, kv, prompt = await run_in_threadpool(state.answerer.prepare, bank, body.question, m)
        retrieval_ms = 1e3 * (time.perf_counter() - t0)
        capsule_ids = list(kv) if m.kv == "capsules" else []
        prompt_ids = encode_prompt(state.tokenizer, prompt, prefix=bank.prefix_token_ids)
        _check_length(bank, prompt_ids, capsule_ids, body.max_tokens, "question")
        from kvi_engine.serve.request import SamplingParams
        req = _new_request(prompt_ids, capsule_ids, bank, SamplingParams(max_tokens=body.max_tokens),
                           body.attribution and bool(capsule_ids))
        _submit(req)
        retrieved = {"question": body.question, "method": m.name, "generation": bank.generation,
                     "entities": found.entities, "intent": list(found.intent),
                     "triples": state.answerer.triples(bank, found),
                     "capsules": [{"capsule_id": c, "statement": bank.statement(c)} for c in capsule_ids],
                     "evidence": evidence, "retrieval_ms": round(retrieval_ms, 3)}

        async def final() -> dict:
            raw = req.choices[0].text
            a = await run_in_threadpool(state.answerer.finish, bank, m, found, evidence, kv, raw)
            out = {**retrieved, "answer": a.text, "trace": asdict(a.trace),
                   "ttft_ms": None if req.ttft_s is None else round(1e3 * req.ttft_s, 3),
                   "token_ids": req.choices[0].tokens}
            if req.attribution:
                out["attribution"] = summarise(req.choices[0].attribution, capsule_ids, state.scheduler.num_layers)
            return out

        if body.stream:
            async def sse():
                yield _sse({"event": "retrieval", **retrieved})
                async for ev in _events(http, req):
                    if ev[0] == "delta":
                        yield _sse({"event": "delta", "text": ev[2]})
                    elif ev[0] == "error":
                        yield _sse({"event": "error", "message": ev[1]})
                        return
                yield _sse({"event": "answer", **(await final())})
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async for ev in _events(http, req):
            if ev[0] == "error":
                return _error(500, ev[1], None, "server_error")
        if not req.done:
            return Response(status_code=499)
        return JSONResponse(await final())

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
