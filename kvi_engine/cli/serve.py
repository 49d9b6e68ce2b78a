"""``kvi serve``: load the model, bank, graph and indexes once and serve them over HTTP (OpenAI-compatible, batching
across requests). Needs the ``serve`` extra; binds to loopback unless ``--host`` says otherwise."""
from __future__ import annotations

from kvi_engine.cli.common import add_model_args, load_model_from


def cmd_serve(args) -> int:
    from kvi_engine.utils.extras import require
    for module in ("fastapi", "uvicorn", "prometheus_client"):  # before loading a model: fail in one line, fast
        require(module, "serve", "kvi serve")
    from kvi_engine.bank.bank import KVBank
    from kvi_engine.capsules.capsule import load_entities
    from kvi_engine.serve.server import make_state, serve
    bank = KVBank.open(args.bank)
    model, tok = load_model_from(args)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    entities = load_entities(args.entities) if args.entities else ()
    state = make_state(model, tok, bank, entities=entities, model_name=args.served_model_name or args.model or "kvi",
                       max_batch=args.max_batch, max_queue=args.max_queue, prefill_tokens=args.prefill_tokens,
                       max_prompt_tokens=args.max_prompt_tokens, serial=args.serial, backend=args.backend)
    serve(state, args.host, args.port, log_level=args.log_level)
    return 0


def add_subparsers(sub) -> None:
    p = sub.add_parser("serve", help="serve a bank over HTTP (OpenAI-compatible, batching; needs the serve extra)")
    p.add_argument("--bank", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="0: a free port (printed)")
    p.add_argument("--entities", help="entities JSONL (aliases for entity linking in /v1/answer)")
    p.add_argument("--served-model-name", help="the model id in responses (default: --model)")
    p.add_argument("--max-batch", type=int, default=32, help="rows (choices) decoded together")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    p.add_argument("--prefill-tokens", type=int, default=2048, help="prompt tokens per prefill batch")
    p.add_argument("--max-prompt-tokens", type=int, default=8192)
    p.add_argument("--serial", action="store_true", help="one request at a time (the benchmark's baseline)")
    p.add_argument("--backend", help="force an attention backend (reference, sdpa, cpp, triton)")
    p.add_argument("--log-level", default="warning")
    add_model_args(p)
    p.set_defaults(func=cmd_serve)
