"""Running the app: ``serve()`` loads nothing itself -- it takes a model, tokenizer and bank, builds the scheduler,
watcher, pipeline and app, and runs uvicorn on a socket it binds (port 0: a free port, printed). SIGTERM / SIGINT
are uvicorn's: it stops accepting connections, lets in-flight requests finish, then the app's shutdown drains the
scheduler and the process exits. ``background()`` runs the same server in a thread (tests)."""
from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

from kvi_engine.serve.answer import Answerer
from kvi_engine.serve.app import ServeState, build_app
from kvi_engine.serve.banks import BankWatcher
from kvi_engine.serve.metrics import Metrics
from kvi_engine.serve.scheduler import Scheduler
from kvi_engine.utils.extras import require

LOOPBACK = "127.0.0.1"


def make_state(model, tokenizer, bank, *, entities=(), model_name: str = "kvi", max_batch: int = 32,
               max_queue: int = 256, prefill_tokens: int = 2048, max_prompt_tokens: int = 8192,
               default_max_tokens: int = 16, serial: bool = False, backend: str | None = None,
               encoder=None, check: bool = True) -> ServeState:
    if check:
        bank.check_model(model, tokenizer)
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos) first")
    metrics = Metrics()
    scheduler = Scheduler(model, tokenizer, bank, max_batch=max_batch, max_queue=max_queue,
                          prefill_tokens=prefill_tokens, backend=backend, metrics=metrics, serial=serial)
    metrics.generation.set(bank.generation)
    return ServeState(model, tokenizer, BankWatcher(bank), scheduler, Answerer(model, tokenizer, entities,
                      encoder=encoder), metrics, model_name, max_prompt_tokens, default_max_tokens)


def bind(host: str = LOOPBACK, port: int = 8000) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(state: ServeState, sock: socket.socket, log_level: str):
    uvicorn = require("uvicorn", "serve", "kvi serve")
    require("fastapi", "serve", "kvi serve")
    config = uvicorn.Config(build_app(state), log_level=log_level, lifespan="on", timeout_keep_alive=30,
                            backlog=2048)
    return uvicorn.Server(config)


def serve(state: ServeState, host: str = LOOPBACK, port: int = 8000, *, log_level: str = "warning") -> None:
    sock = bind(host, port)
    server = _server(state, sock, log_level)
    h, p = sock.getsockname()[:2]
    print(f"kvi serve: listening on http://{h if ':' not in h else f'[{h}]'}:{p} (bank generation "
          f"{state.scheduler.bank.generation}, model {state.model_name})", flush=True)
    # uvicorn handles SIGTERM / SIGINT while it runs (stop accepting, let in-flight requests finish, shut the app
    # down), then re-raises the signal to the handler it found: a no-op here, so a drained server exits with 0
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    print("kvi serve: drained and stopped", flush=True, file=sys.stderr)


@contextlib.contextmanager
def background(state: ServeState, host: str = LOOPBACK, *, log_level: str = "warning"):
    """The server in a thread on a free loopback port; yields its base URL; stops it (draining) on exit."""
    sock = bind(host, 0)
    server = _server(state, sock, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread died during startup")
        threading.Event().wait(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
