"""``kvi serve`` over real HTTP: a uvicorn server started by the test on a free loopback port, a tiny model from a
config. Every generated token is checked against ``kvi.inject`` + ``model.generate`` on the same weights (greedy),
attribution against eager attention probabilities of one plain forward, bank updates, overload and shutdown.
The server owns its model for its life (the injection stays attached), so it gets a copy of the same weights."""
import concurrent.futures as cf
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from kvi_engine.capsules.capsule import Capsule  # noqa: E402
from kvi_engine.compile.compiler import add_capsules, compile_bank  # noqa: E402
from kvi_engine.generate.engine import KVIEngine, encode_prompt  # noqa: E402
from kvi_engine.generate.inject import inject  # noqa: E402
from kvi_engine.query.pipeline import QueryPipeline  # noqa: E402
from kvi_engine.retrieval.encoder import default_encoder  # noqa: E402
from kvi_engine.serve.server import background, make_state  # noqa: E402
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer  # noqa: E402

FAMILY = "llama"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    m, tok = model(FAMILY, True), tokenizer(True)  # BOS: banks carry a shared prefix
    bank = compile_bank(m, tok, CAPSULES, tmp_path_factory.mktemp("serve") / "bank", quant="fp32",
                        entities=ENTITIES, progress=False)
    return m, tok, bank


@pytest.fixture(scope="module")
def server(setup):
    m, tok, bank = setup
    state = make_state(copy.deepcopy(m), tok, bank, max_batch=16, entities=ENTITIES, encoder=default_encoder())
    with background(state) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client, state


def reference(m, tok, bank, prompt, capsules, max_tokens, chat=False):
    """Greedy tokens of ``kvi.inject`` + ``generate`` for one row, cut at the first EOS (the server stops there)."""
    ids = encode_prompt(tok, prompt, chat=chat, prefix=bank.prefix_token_ids)
    with inject(m, bank, [capsules]), torch.no_grad():
        out = m.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    return new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def complete(client, prompt, capsules=None, **kw):
    body = {"prompt": prompt, **kw}
    if capsules is not None:
        body["kvi"] = {"capsule_ids": capsules}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse(lines):
    out = []
    for line in lines:
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def test_completion_is_openai_shaped_and_equals_inject(server, setup):
    client, _ = server
    m, tok, bank = setup
    body = complete(client, "SFTSV infection causes", [0, 2], max_tokens=10)
    assert body["object"] == "text_completion" and body["id"] and body["model"]
    (choice,) = body["choices"]
    assert set(choice) >= {"index", "text", "finish_reason", "logprobs"} and choice["finish_reason"] in ("length",
                                                                                                     "stop")
    tokens = body["kvi"]["token_ids"][0]
    assert tokens == reference(m, tok, bank, "SFTSV infection causes", [0, 2], 10)
    assert choice["text"] == tok.decode(tokens, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == len(tokens)
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(tok, "SFTSV infection causes",
                                                              prefix=bank.prefix_token_ids))
    assert body["kvi"]["capsule_ids"] == [0, 2] and body["kvi"]["generation"] == bank.generation


def test_concurrent_requests_batch_and_each_equals_its_own_injection(server, setup):
    client, state = server
    m, tok, bank = setup
    n = bank.num_capsules
    jobs = [(f"Question {i}: where is Oslo and what does SFTSV cause{'?' * (i % 3)}",
             [i % n, (i + 2) % n][: 1 + i % 2] if i % 4 else [], 6 + 3 * (i % 3)) for i in range(10)]
    before = state.metrics.batch_size.collect()[0].samples
    start = threading.Barrier(len(jobs))

    def go(job):
        start.wait()
        return complete(client, job[0], job[1], max_tokens=job[2])

    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(go, jobs))
    for (prompt, caps, k), body in zip(jobs, results):
        assert body["kvi"]["token_ids"][0] == reference(m, tok, bank, prompt, caps, k), (prompt, caps)
    after = state.metrics.batch_size.collect()[0].samples
    get = lambda s, name: next(x.value for x in s if x.name == name)  # noqa: E731
    steps = get(after, "kvi_batch_size_count") - get(before, "kvi_batch_size_count")
    rows = get(after, "kvi_batch_size_sum") - get(before, "kvi_batch_size_sum")
    assert steps > 0 and rows / steps > 1.5, f"decode steps averaged {rows / steps:.2f} rows: nothing was batched"



def test_requests_joining_a_running_batch_equal_their_own_injection(server, setup):
    """Continuous batching: B and C (n=2) join while A is mid-decode (their prefilled caches are left-padded into
    the running one, or it into theirs), finish first, and every row still equals its own injection."""
    client, state = server
    m, tok, bank = setup
    a_prompt, b_prompt = "A long question about Oslo, Norway, and the tick-borne SFTSV virus?", "Oslo?"
    with cf.ThreadPoolExecutor(3) as ex:
        fa = ex.submit(complete, client, a_prompt, [1, 4], max_tokens=40)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(len(r.choice.tokens) >= 3 for r in state.scheduler.batch.rows):
            time.sleep(0.002)
        fb = ex.submit(complete, client, b_prompt, [], max_tokens=6)
        fc = ex.submit(complete, client, "Who treats SFTS with favipiravir", [3, 0, 2], max_tokens=5, n=2)
        b, c = fb.result(), fc.result()
        assert not fa.done(), "A finished before B and C: nothing joined a running batch"
        a = fa.result()
    assert a["kvi"]["token_ids"][0] == reference(m, tok, bank, a_prompt, [1, 4], 40)
    assert b["kvi"]["token_ids"][0] == reference(m, tok, bank, b_prompt, [], 6)
    assert c["kvi"]["token_ids"] == [reference(m, tok, bank, "Who treats SFTS with favipiravir", [3, 0, 2], 5)] * 2


def test_streaming_completion_and_chat(server, setup):
    client, _ = server
    m, tok, bank = setup
    with client.stream("POST", "/v1/completions", json={"prompt": "Oslo is located in", "max_tokens": 8,
                                                        "stream": True, "kvi": {"capsule_ids": [2]}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks, last = events[:-2], events[-2]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    tokens = last["kvi"]["token_ids"][0]
    assert tokens == reference(m, tok, bank, "Oslo is located in", [2], 8)
    assert text == tok.decode(tokens, skip_special_tokens=True) and last["usage"]["completion_tokens"] == len(tokens)

    msgs = [{"role": "user", "content": "What does SFTSV cause?"}]
    body = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 6,
                                                     "kvi": {"capsule_ids": [0]}}).json()
    assert body["object"] == "chat.completion"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert body["kvi"]["token_ids"][0] == reference(m, tok, bank, msgs, [0], 6)
    with client.stream("POST", "/v1/chat/completions", json={"messages": msgs, "max_tokens": 6, "stream": True,
                                                             "kvi": {"capsule_ids": [0]}}) as r:
        events = sse(r.iter_lines())
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == msg["content"]


def test_n_sampling_stop_and_max_tokens(server, setup):
    client, _ = server
    m, tok, bank = setup
    greedy = reference(m, tok, bank, "Favipiravir treats", [3], 12)
    # n > 1 greedy: every choice is the greedy continuation; top_k=1 sampling is greedy too
    body = complete(client, "Favipiravir treats", [3], max_tokens=12, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["kvi"]["token_ids"] == [greedy] * 3
    body = complete(client, "Favipiravir treats", [3], max_tokens=12, temperature=1.5, top_k=1, n=2, seed=3)
    assert body["kvi"]["token_ids"] == [greedy] * 2
    # seeded sampling: reproducible per choice whatever shares the batch, and the choices differ
    a = complete(client, "Favipiravir treats", [3], max_tokens=12, temperature=1.5, n=3, seed=7)
    b = complete(client, "Favipiravir treats", [3], max_tokens=12, temperature=1.5, n=3, seed=7)
    assert a["kvi"]["token_ids"] == b["kvi"]["token_ids"]
    assert len({tuple(t) for t in a["kvi"]["token_ids"]}) > 1
    # max_tokens: exactly that many tokens, finish "length" (the tiny model rarely says EOS)
    body = complete(client, "Favipiravir treats", [3], max_tokens=5)
    if len(greedy) >= 5:
        assert body["kvi"]["token_ids"][0] == greedy[:5] and body["choices"][0]["finish_reason"] == "length"
    # a stop sequence taken from the greedy text: the text ends right before it
    full = tok.decode(greedy, skip_special_tokens=True)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    if stop.strip():
        body = complete(client, "Favipiravir treats", [3], max_tokens=12, stop=[stop])
        assert body["choices"][0]["text"] == full[: full.index(stop)]
        assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "kvi": {"capsule_ids": [999]}}, 400, "kvi.capsule_ids"),
    ({"prompt": "x", "kvi": {"capsule_ids": [-1]}}, 400, "kvi.capsule_ids"),
    ({"prompt": "x", "kvi": {"capsule_ids": ["a"]}}, 400, "kvi.capsule_ids.0"),
    ({"prompt": "x", "kvi": {"capsules": [1]}}, 400, "kvi.capsules"),
    ({"prompt": "x", "temprature": 0.5}, 400, "temprature"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x " * 3000}, 400, "prompt"),
    ({}, 400, "prompt"),
])
def test_bad_requests_name_the_field(server, body, status, param):
    client, _ = server
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and param.split(".")[-1] in err["message"], err


def test_malformed_json_unknown_route_bank_health_metrics(server, setup):
    client, _ = server
    _, _, bank = setup
    r = client.post("/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    assert client.get("/health").json()["status"] == "ok"
    b = client.get("/v1/bank").json()
    assert b["generation"] == bank.generation and b["num_capsules"] == bank.num_capsules
    assert b["header"]["live_capsules"] == bank.num_capsules
    text = client.get("/metrics").text
    for name in ("kvi_requests_total", "kvi_queue_depth", "kvi_batch_size_bucket",
                 "kvi_time_to_first_token_seconds_bucket", "kvi_time_per_output_token_seconds_bucket"):
        assert name in text, name
    assert 'endpoint="/v1/completions",status="400"' in text


def eager_attentions(m, seq, caps_lens, prefix_len):
    """Attention probabilities of one plain eager forward over [prefix, c1..cn, rest] with capsules block-diagonal
    (each sees the prefix and itself): the injection's contract, so its per-capsule masses are the reference."""
    n = len(seq)
    allowed = torch.ones(n, n).tril().bool()
    start = prefix_len
    for length in caps_lens:
        allowed[start + length:, start:start + length] = True
        allowed[start:start + length, prefix_len:start] = False
        start += length
    allowed[start:, :start] = True
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    old = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = m(input_ids=torch.tensor([seq]), attention_mask=mask, output_attentions=True)
    finally:
        m.set_attn_implementation(old)
    return [a[0].double() for a in out.attentions]  # per layer [heads, q, k]


def test_attribution_equals_eager_attention(server, setup):
    client, state = server
    m, tok, bank = setup
    caps, prompt = [0, 4], "Who does Mira Vance work for?"
    body = complete(client, prompt, caps, max_tokens=6)
    (attr,) = body["kvi"]["attribution"]
    tokens = body["kvi"]["token_ids"][0]
    ids = encode_prompt(tok, prompt, prefix=bank.prefix_token_ids)
    lens = [len(bank.token_ids(c)) for c in caps]
    P = bank.prefix_len
    seq = bank.prefix_token_ids + [t for c in caps for t in bank.token_ids(c)] + ids + tokens[:-1]
    probs = eager_attentions(m, seq, lens, P)
    first_query = P + sum(lens) + len(ids) - 1  # the query that chose the first generated token
    queries = list(range(first_query, first_query + len(tokens)))
    want = torch.zeros(len(tokens), len(probs), len(caps))  # [tokens, layers, capsules]
    bounds = [P + sum(lens[:i]) for i in range(len(caps) + 1)]
    for layer, p in enumerate(probs):
        for j, q in enumerate(queries):
            for i in range(len(caps)):
                want[j, layer, i] = p[:, q, bounds[i]:bounds[i + 1]].sum(-1).mean()
    assert attr["tokens"] == len(tokens)
    got_mass = torch.tensor([c["mass"] for c in attr["capsules"]])
    got_layers = torch.tensor([c["per_layer"] for c in attr["capsules"]])
    got_tokens = torch.tensor(attr["per_token"])
    assert [c["capsule_id"] for c in attr["capsules"]] == caps
    torch.testing.assert_close(got_mass, want.mean((0, 1)).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_layers, want.mean(0).T.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_tokens, want.mean(1).float(), atol=1e-5, rtol=0)
    prefix_mass = sum(float(p[:, queries, :P].sum(-1).mean()) for p in probs) / len(probs)
    assert abs(attr["prefix"] - prefix_mass) < 1e-5
    assert abs(attr["prefix"] + float(got_mass.sum()) + attr["own"] - 1) < 1e-4


def test_queue_full_is_429_with_retry_after(setup):
    m, tok, bank = setup
    state = make_state(copy.deepcopy(m), tok, bank, max_batch=1, max_queue=1, serial=True)
    entered, release = threading.Event(), threading.Event()
    forward = state.scheduler._forward

    def blocked(*a, **kw):  # the model thread holds its first forward until the test has filled the queue
        entered.set()
        release.wait(30)
        return forward(*a, **kw)

    state.scheduler._forward = blocked
    with background(state) as url, httpx.Client(base_url=url, timeout=60) as client, cf.ThreadPoolExecutor(2) as ex:
        first = ex.submit(client.post, "/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert entered.wait(30)
        second = ex.submit(client.post, "/v1/completions", json={"prompt": "b", "max_tokens": 2})
        deadline = time.monotonic() + 30
        while state.scheduler.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        third = client.post("/v1/completions", json={"prompt": "c", "max_tokens": 2})
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["type"] == "overloaded"
        release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200


def test_client_disconnect_frees_its_row(setup):
    m, tok, bank = setup
    state = make_state(copy.deepcopy(m), tok, bank)
    with background(state) as url, httpx.Client(base_url=url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": "Oslo", "max_tokens": 3500,
                                                            "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk
        deadline = time.monotonic() + 20
        while (state.scheduler.batch.rows or state.scheduler.queue_depth) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not state.scheduler.batch.rows
        generated = state.metrics.tokens._value.get()
        assert generated < 3000, f"{generated} tokens: the abandoned row kept generating"


def test_bank_update_while_serving_each_request_sees_one_generation(setup, tmp_path):
    m, tok, _ = setup
    root = tmp_path / "bank"
    bank = compile_bank(m, tok, CAPSULES, root, quant="fp32", entities=ENTITIES, progress=False)
    old_gen, new_id = bank.generation, bank.num_capsules
    state = make_state(copy.deepcopy(m), tok, bank)
    with background(state) as url, httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/v1/completions", json={"prompt": "x", "kvi": {"capsule_ids": [new_id]}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "kvi.capsule_ids"
        with cf.ThreadPoolExecutor(1) as ex:
            old = ex.submit(complete, client, "Oslo is located in", [2], max_tokens=40)
            while not state.scheduler.batch.rows:
                time.sleep(0.005)
            add_capsules(root, m, tok, [Capsule("Oslo", "capital_of", "Norway")])
            time.sleep(0.3)  # the watcher looks at the manifest every 0.1 s
            new = complete(client, "Oslo is the capital of", [new_id, 2], max_tokens=8)
            old = old.result()
        assert old["kvi"]["generation"] == old_gen and new["kvi"]["generation"] > old_gen
        assert old["kvi"]["token_ids"][0] == reference(m, tok, bank, "Oslo is located in", [2], 40)
        from kvi_engine.bank.bank import KVBank
        newer = KVBank.open(root)
        assert new["kvi"]["token_ids"][0] == reference(m, tok, newer, "Oslo is the capital of", [new_id, 2], 8)
        assert client.get("/v1/bank").json()["generation"] == newer.generation


def test_kvi_serve_cli_drains_on_sigterm(setup, tmp_path):
    m, tok, bank = setup
    m.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kvi_engine.cli.main", "serve", "--bank", str(bank.root),
                             "--model", str(tmp_path / "model"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split("listening on ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json={"prompt": "Oslo", "max_tokens": 80,
                                                                "stream": True}) as r:
                lines = r.iter_lines()
                first = next(ln for ln in lines if ln.startswith("data: "))
                proc.send_signal(signal.SIGTERM)  # in flight: it must finish, not be cut
                events = [json.loads(first[6:])] + sse(lines)
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
        assert proc.wait(60) == 0
        assert "drained" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


QUESTION = "Which disease does SFTSV cause?"


def pipeline_answer(setup, method="KVI", max_tokens=12):
    m, tok, bank = setup
    pipe = QueryPipeline.from_engine(KVIEngine(m, tok, bank), ENTITIES, encoder=default_encoder())
    return pipe.answer([QUESTION], method, max_new_tokens=max_tokens)[0]


@pytest.mark.parametrize("method", ["KVI", "GraphRAG"])
def test_answer_runs_the_pipeline_like_kvi_ask(server, setup, method):
    client, _ = server
    want = pipeline_answer(setup, method)
    r = client.post("/v1/answer", json={"question": QUESTION, "method": method, "max_tokens": 12})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["answer"] == want.text and got["trace"]["raw"] == want.trace.raw
    assert got["trace"]["injected"] == want.trace.injected and got["entities"] == want.trace.entities
    assert "SFTSV" in got["entities"] and got["evidence"] == want.trace.evidence
    assert [t["capsule_id"] for t in got["triples"]] == [t["capsule_id"] for t in want.trace.triples]
    if method == "KVI":
        assert got["capsules"] and [c["capsule_id"] for c in got["attribution"]["capsules"]] == want.trace.injected
    else:
        assert got["capsules"] == [] and "attribution" not in got
    with client.stream("POST", "/v1/answer", json={"question": QUESTION, "method": method, "max_tokens": 12,
                                                   "stream": True}) as s:
        events = sse(s.iter_lines())
    assert events[0]["event"] == "retrieval" and events[-1] == "[DONE]" and events[-2]["event"] == "answer"
    assert events[-2]["answer"] == want.text
    assert "".join(e["text"] for e in events if isinstance(e, dict) and e.get("event") == "delta") == want.trace.raw
    r = client.post("/v1/answer", json={"question": QUESTION, "method": "RAG"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "method"


def test_retrieve_extension_on_completions(server, setup):
    client, _ = server
    want = pipeline_answer(setup)
    r = client.post("/v1/completions", json={"prompt": QUESTION, "max_tokens": 4, "kvi": {"retrieve": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kvi"]["capsule_ids"] == want.trace.injected
    assert body["kvi"]["trace"]["entities"] == want.trace.entities


def test_web_page_in_headless_chromium(server, setup, tmp_path):
    """The page at / in a real headless Chromium (Debian's, driven by Playwright): ask, watch it stream, see the
    entities, graph path, capsules with attribution bars and evidence."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
    if chromium is None:
        pytest.skip("no system Chromium (apt-get install chromium)")
    client, _ = server
    want = pipeline_answer(setup, max_tokens=16)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(str(client.base_url) + "/")
            page.wait_for_function("document.getElementById('bank').textContent.includes('generation')")
            page.fill("#question", QUESTION)
            page.fill("#max_tokens", "16")
            page.click("#go")
            page.wait_for_selector("body[data-done='1']", timeout=60_000)
            shown = page.inner_text("#answer")
            assert shown == (want.text or "(nothing grounded)")
            assert "SFTSV" in page.inner_text("#entities")
            rows = page.query_selector_all("#capsules tbody tr")
            assert [int(r.get_attribute("data-capsule")) for r in rows] == want.trace.injected
            widths = [float(f.evaluate("e => e.getBoundingClientRect().width"))
                      for f in page.query_selector_all("#capsules .fill")]
            assert len(widths) == len(rows) and max(widths) > 0  # one bar per capsule, the largest drawn full
            assert page.query_selector_all("#evidence li") and page.query_selector_all("#path li")
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
            assert (tmp_path / "serve_page.png").stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
