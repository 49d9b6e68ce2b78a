"""Load benchmark of ``kvi serve``: 1..64 concurrent streaming clients over loopback against the batching server and
against a one-request-at-a-time server (``serial``: one request admitted, run to its end, then the next), same run,
same model and bank.

    kvi bench serve                                  # ~100M-param CPU bench model, clients 1/4/16/64
    kvi bench serve --clients 16 --requests 2000     # the issue's target run
    kvi bench serve --tiny --requests 40             # a quick smoke run on the 2-layer test model

Each request streams a completion (``max_tokens`` new tokens, greedy) with its own ``--capsules`` random capsules
injected. TTFT is measured by the client (request sent -> first streamed token), latency to the final ``[DONE]``.
Each (server, clients) cell stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first;
requests/s and tokens/s are over the cell's wall time. A failed request is any non-200 answer, a broken stream or
a stream without ``[DONE]``. Writes bench/results/serve.{json,csv,png}; with ``--screenshot`` also the web page
after one question (headless Chromium through Playwright), serve_page.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.ttft import synthetic_capsules
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.models.loading import load_model
from kvi_engine.testing.tiny import bench_model, tiny_model, tiny_tokenizer
from kvi_engine.utils.extras import require
from kvi_engine.utils.plotting import plot_or_skip, pyplot, save_png


@dataclass(slots=True)
class ServeRow:
    server: str          # "batched" | "serial"
    clients: int
    requests: int
    failed: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    mean_batch: float    # rows per decode step, from the server's metrics
    server_ttft_p50_ms: float  # submission to first token inside the server (no HTTP, no client)
    server_ttft_p99_ms: float
    speedup_rps: float = float("nan")   # batched / serial requests/s at the same client count
    ttft_p99_vs_single: float = float("nan")  # p99 TTFT over the single-client p50 TTFT of the same server


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _one(client, body) -> tuple[bool, float | None, float, int, float | None]:
    t0 = time.perf_counter()
    ttft, done, tokens, server_ttft = None, False, 0, None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return False, None, time.perf_counter() - t0, 0, None
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                ev = json.loads(line[6:])
                if ttft is None and ev.get("choices") and ev["choices"][0].get("finish_reason") is None:
                    # the server streams one chunk per token (text may be held back): the first is the first token
                    ttft = time.perf_counter() - t0
                if "usage" in ev:
                    tokens = ev["usage"]["completion_tokens"]
                    server_ttft = (ev.get("kvi") or {}).get("ttft_ms")
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    except Exception:  # noqa: BLE001 -- a broken connection is a failed request, counted
        return False, None, time.perf_counter() - t0, 0, None
    return done, ttft, time.perf_counter() - t0, tokens, server_ttft


async def _load(url: str, clients: int, total: int, seconds: float, make_body) -> dict:
    httpx = require("httpx", "serve", "kvi bench serve")
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    out = {"ok": 0, "failed": 0, "ttft": [], "latency": [], "tokens": 0, "server_ttft": []}
    issued = 0
    t_end = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker(w):
            nonlocal issued
            while issued < total and time.perf_counter() < t_end:
                issued += 1
                ok, ttft, latency, tokens, server_ttft = await _one(client, make_body())
                if ok:
                    out["ok"] += 1
                    out["latency"].append(latency)
                    out["tokens"] += tokens
                    if ttft is not None:
                        out["ttft"].append(ttft)
                    if server_ttft is not None:
                        out["server_ttft"].append(server_ttft / 1e3)
                else:
                    out["failed"] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        out["seconds"] = time.perf_counter() - t0
    return out


def _batch_stats(state) -> tuple[float, float]:
    """(rows summed over decode steps, decode steps) so far, from the server's metrics."""
    get = {s.name: s.value for s in state.metrics.batch_size.collect()[0].samples}
    return get.get("kvi_batch_size_sum", 0.0), get.get("kvi_batch_size_count", 0.0)


def run_cell(model, tok, bank, server: str, clients: int, args, seed: int) -> ServeRow:
    from kvi_engine.serve.server import background, make_state
    rng = random.Random(seed)
    ids = list(range(bank.num_capsules))
    words = ["station", "district", "survey", "which", "holds", "region", "north", "report", "of", "the"]

    def body():
        prompt = "Question: " + " ".join(rng.choice(words) for _ in range(args.prompt_words)) + "?"
        return {"prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
                "kvi": {"capsule_ids": rng.sample(ids, min(args.capsules, len(ids))), "attribution": False}}

    state = make_state(model, tok, bank, max_batch=args.max_batch, max_queue=max(256, 2 * clients),
                       prefill_tokens=args.prefill_tokens, serial=server == "serial", check=False)
    with background(state) as url:
        asyncio.run(_load(url, 1, 2, 60, body))  # warm-up: first-use costs (plans, gathers) outside the cell
        rows0, steps0 = _batch_stats(state)
        r = asyncio.run(_load(url, clients, args.requests, args.seconds, body))
        rows1, steps1 = _batch_stats(state)
    mean_batch = (rows1 - rows0) / (steps1 - steps0) if steps1 > steps0 else float("nan")
    n = r["ok"]
    return ServeRow(server, clients, n + r["failed"], r["failed"], round(r["seconds"], 3),
                    n / r["seconds"], r["tokens"] / r["seconds"],
                    1e3 * _pct(r["ttft"], 0.5), 1e3 * _pct(r["ttft"], 0.99),
                    1e3 * _pct(r["latency"], 0.5), 1e3 * _pct(r["latency"], 0.99), round(mean_batch, 2),
                    1e3 * _pct(r["server_ttft"], 0.5), 1e3 * _pct(r["server_ttft"], 0.99))


def plot(rows: list[ServeRow], path: str) -> None:
    plt = pyplot(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=110)
    for server in ("batched", "serial"):
        pts = sorted((r.clients, r) for r in rows if r.server == server)
        if not pts:
            continue
        xs = [c for c, _ in pts]
        axes[0].plot(xs, [r.requests_per_s for _, r in pts], marker="o", label=server)
        axes[1].plot(xs, [r.ttft_p99_ms for _, r in pts], marker="o", label=f"{server} p99")
        axes[1].plot(xs, [r.ttft_p50_ms for _, r in pts], marker=".", ls="--", label=f"{server} p50")
        axes[2].plot(xs, [r.latency_p99_ms for _, r in pts], marker="o", label=f"{server} p99")
    for ax, label in zip(axes, ("requests/s", "TTFT (ms)", "end-to-end latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.tight_layout()
    save_png(fig, path)


def screenshot(model, tok, bank, path: Path) -> None:
    """The web page after one question, in headless Chromium (Playwright driving the system browser)."""
    sync_api = require("playwright.sync_api", "test", "kvi bench serve --screenshot")
    from kvi_engine.serve.server import background, make_state
    exe = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    state = make_state(model, tok, bank, check=False)
    with background(state) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        page.fill("#question", "Which district holds station 3 of the survey?")
        page.click("#go")
        page.wait_for_selector("body[data-done='1']", timeout=300_000)
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF name or local dir (default: the ~100M random CPU bench model)")
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test model instead (smoke runs)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--servers", nargs="+", default=["batched", "serial"], choices=["batched", "serial"])
    ap.add_argument("--requests", type=int, default=64, help="per cell (at most)")
    ap.add_argument("--seconds", type=float, default=120.0, help="per cell (at most)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--capsules", type=int, default=4, help="injected per request")
    ap.add_argument("--bank-capsules", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=12)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=2048,
                    help="the batched server's prompt-token budget per prefill (kvi serve --prefill-tokens)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--screenshot", action="store_true", help="also save the web page (needs Chromium)")
    ap.add_argument("--out", default=str(results.default_out("serve")))
    args = ap.parse_args(argv)
    for module in ("fastapi", "uvicorn", "prometheus_client", "httpx"):
        require(module, "serve", "kvi bench serve")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tok, _ = load_model(args.model, dtype=torch.float32, allow_fallback=False)
    elif args.tiny:
        tok = tiny_tokenizer(bos=True)
        model = tiny_model("llama", tok)
    else:
        model, tok = bench_model()
    n_params = sum(p.numel() for p in model.parameters())
    rows: list[ServeRow] = []
    with tempfile.TemporaryDirectory() as d:
        bank = compile_bank(model, tok, synthetic_capsules(args.bank_capsules), d, quant="fp16", batch_size=32,
                            progress=False)
        cells = [(s, c) for s in args.servers for c in args.clients]
        for i, (server, clients) in enumerate(cells):
            row = run_cell(model, tok, bank, server, clients, args, seed=i)
            print(f"{server:8s} clients {clients:3d}: {row.requests_per_s:7.2f} req/s, {row.tokens_per_s:8.1f} tok/s,"
                  f" TTFT p50 {row.ttft_p50_ms:8.1f} p99 {row.ttft_p99_ms:8.1f} ms, failed {row.failed}, "
                  f"mean batch {row.mean_batch:.1f}", flush=True)
            rows.append(row)
        if args.screenshot:
            screenshot(model, tok, bank, Path(args.out).with_name(Path(args.out).name + "_page.png"))
    for r in rows:
        serial = next((s for s in rows if s.server == "serial" and s.clients == r.clients), None)
        single = next((s for s in rows if s.server == r.server and s.clients == 1), None)
        if serial is not None and r.server == "batched":
            r.speedup_rps = r.requests_per_s / serial.requests_per_s if serial.requests_per_s else float("nan")
        if single is not None and single.ttft_p50_ms:
            r.ttft_p99_vs_single = r.ttft_p99_ms / single.ttft_p50_ms
    print(f"model: {type(model).__name__} {n_params / 1e6:.0f}M params, fp32, {torch.get_num_threads()} threads; "
          f"{args.capsules} of {args.bank_capsules} capsules per request, {args.max_tokens} new tokens")
    print(results.format_table(rows, ["server", "clients", "requests", "failed", "requests_per_s", "tokens_per_s",
                                      "ttft_p50_ms", "ttft_p99_ms", "latency_p99_ms", "mean_batch", "speedup_rps",
                                      "ttft_p99_vs_single"]))
    doc = results.write(args.out, "serve", rows, vars(args), model_params=n_params)
    plot_or_skip(plot, rows, args.out + ".png")
    print(f"wrote {args.out}.json / .csv / .png ({doc['commit'] or 'no commit'})")
    return 0
