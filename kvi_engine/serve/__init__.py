"""``kvi serve``: a resident, continuously batching, OpenAI-compatible HTTP server over one model and one bank.

Files, one concept each: :mod:`~kvi_engine.serve.request` (a request, its choices and sampling parameters),
:mod:`~kvi_engine.serve.sampling` (per-row token choice and stop sequences), :mod:`~kvi_engine.serve.batch` (the
ragged running batch: KV cache merge, masks, positions), :mod:`~kvi_engine.serve.scheduler` (the model thread:
admission, prefill, decode steps), :mod:`~kvi_engine.serve.attribution` (attention mass per injected capsule),
:mod:`~kvi_engine.serve.banks` (bank generations), :mod:`~kvi_engine.serve.schemas` (request bodies),
:mod:`~kvi_engine.serve.metrics` (Prometheus), :mod:`~kvi_engine.serve.answer` (the query pipeline per request),
:mod:`~kvi_engine.serve.app` (the FastAPI routes), :mod:`~kvi_engine.serve.server` (uvicorn, signals). FastAPI,
uvicorn and prometheus_client come with the ``serve`` extra and are imported only here.
"""
