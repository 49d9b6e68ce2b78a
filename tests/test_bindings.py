"""Every binding of kvi_engine._core validates its arguments before touching memory: each invalid layout class --
wrong dtype, wrong rank, non-contiguous, empty, truncated, huge sizes, negative or out-of-range indices, head dims
that do not fill whole code bytes -- raises a documented error (ValueError, TypeError, IndexError). The calls run in
a forked child, so a segfault fails this test with the case that caused it instead of killing the suite."""
import faulthandler
import json
import os
import signal

import numpy as np
import pytest

from kvi_engine import _core
from kvi_engine.graph.normalize import native_normalizer

ALLOWED = ("ValueError", "TypeError", "IndexError")
HUGE = (2 ** 40, 2 ** 62, -1)


def graph_args():
    subj = np.array([0, 0, 1], np.int32)
    rel = np.array([0, 1, 0], np.int32)
    obj = np.array([1, 2, 2], np.int32)
    oi, ot = _core.build_csr(subj, 3)
    ii, it = _core.build_csr(obj, 3)
    return dict(subj=subj, rel=rel, obj=obj, out_indptr=oi, out_triples=ot, in_indptr=ii, in_triples=it,
                num_entities=3, num_relations=2)


def attention_args(fmt="int8", D=16, H=2, B=2, Q=3, KV=4, T=6, P=1, S=5):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    cd = D // 2 if fmt == "int4" else D // 4 if fmt == "int2" else D
    codes = rng.integers(0, 127, (T, H, cd)).astype(np.int8 if fmt == "int8" else np.uint8)
    args = dict(query=f(B, 2 * H, Q, D), own_k=f(B, H, KV, D), own_v=f(B, H, KV, D), own_mask=None,
                bank_k=codes, bank_v=codes.copy(), bank_format=fmt, prefix_k=f(P, H, D), prefix_v=f(P, H, D),
                prefix_format="fp32", token=np.zeros((B, S), np.int32), visible=np.ones((B, S), np.uint8),
                cos=f(B, S, D // 2), sin=f(B, S, D // 2), out=np.zeros((B, 2 * H, Q, D), np.float32),
                lse=np.zeros((B, 2 * H, Q), np.float32), scale=0.25,
                k_scale=np.ones((T, H, 1), np.float16), v_scale=np.ones((T, H, 1), np.float16), group_size=D)
    if fmt in ("int4", "int2"):
        args.update(k_zero=np.zeros((T, H, 1), np.float16), v_zero=np.zeros((T, H, 1), np.float16))
    return args


def gather_args(**kw):
    a = attention_args(**kw)
    B, H, D = a["query"].shape[0], a["own_k"].shape[1], a["query"].shape[3]
    S = a["token"].shape[1]
    for k in ("query", "own_k", "own_v", "own_mask", "out", "lse", "scale"):
        a.pop(k)
    a.update(out_k=np.zeros((B, H, S, D), np.float32), out_v=np.zeros((B, H, S, D), np.float32))
    return a


def decode_args(scheme="int4", D=8, rows=4):
    per = {"int4": 2, "int2": 4}.get(scheme, 1)
    dt = np.int8 if scheme == "int8" else np.uint8
    ng = D // 8 if scheme in ("int4", "int2") else 1
    return dict(codes=np.zeros((rows, max(D // per, 1)), dt), scale=np.ones((rows, max(ng, 1)), np.float16),
                zero=np.zeros((rows, max(ng, 1)), np.float16) if scheme in ("int4", "int2") else None,
                scheme=scheme, head_dim=D, code_rows=np.arange(rows, dtype=np.int64),
                param_rows=np.arange(rows, dtype=np.int64))


def array_mutations(a: np.ndarray):
    """Invalid versions of one array argument."""
    other = np.float64 if a.dtype != np.float64 else np.float32
    yield "dtype", a.astype(other)
    yield "rank", a.reshape(-1)[None, None] if a.ndim < 3 else a.reshape(a.shape[0], -1)
    if a.ndim and a.shape[0] > 1:
        yield "strided", np.repeat(a, 2, axis=0)[::2]
        yield "truncated", a[:-1].copy()
    if a.ndim and a.shape[-1] > 1:
        yield "non-contiguous", np.asfortranarray(np.repeat(a[..., None], 2, -1)[..., 0])[..., ::1] \
            if a.ndim > 1 else np.repeat(a, 2)[::2]
    yield "empty", a[:0].copy()
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        for v in [info.max] + ([-1, info.min] if info.min < 0 else []):
            b = a.copy()
            if b.size:
                b.flat[b.size // 2] = v
                yield f"index {v}", b


# Arguments whose every value is valid: codes and float-format KV (any bit pattern decodes), masks (non-zero is
# visible), linker entity ids (a payload returned as given), a hop limit (the graph bounds the walk), and the group
# size a float format ignores. Every other integer argument is an index or a count, checked against its range.
VALUE_ARGS = {"codes", "bank_k", "bank_v", "visible", "allowed", "entity_ids", "max_hops", "inj_valid", "own_mask",
              ("prefix_attention fp16", "group_size"),
              ("decode_attention", "segment")}  # -1 (no segment) is valid; its range check has its own test
REJECTED = "rejected"  # any of ALLOWED, never "ok"


def cases():
    """(name, binding, kwargs) of invalid calls, plus a few valid ones (the baseline must pass)."""
    out = []

    def mutate(name, fn, valid):
        out.append((f"{name}: valid", fn, valid, "ok"))
        for key, val in valid.items():
            # an index or count out of range must be refused; a value argument may take any value of its dtype
            out_of_range = None if key in VALUE_ARGS or (name, key) in VALUE_ARGS else REJECTED
            if isinstance(val, np.ndarray):
                for what, bad in array_mutations(val):
                    out.append((f"{name}: {key} {what}", fn, {**valid, key: bad},
                                out_of_range if what.startswith("index") else None))
            elif isinstance(val, int) and not isinstance(val, bool):
                for v in HUGE:
                    out.append((f"{name}: {key}={v}", fn, {**valid, key: v}, out_of_range))

    g = graph_args()
    mutate("build_csr", lambda **k: _core.build_csr(k["key"], k["num_keys"]), dict(key=g["subj"], num_keys=3))
    mutate("Graph", lambda **k: _core.Graph(*k.values()), g)
    graph = _core.Graph(*g.values())
    mutate("traverse_batch", lambda **k: graph.traverse_batch(k["seeds"], k["seeds_indptr"], k["max_hops"],
                                                               k["allowed"], 1, -1, -1, 1),
           dict(seeds=np.array([0, 1], np.int64), seeds_indptr=np.array([0, 1, 2], np.int64), max_hops=2,
                allowed=np.ones((1, 2), np.uint8)))
    mutate("ppr", lambda **k: _core.ppr(**k),  # two sentences, two entities, three mentions
           dict(s_indptr=np.array([0, 2, 3], np.int64), s_entities=np.array([0, 1, 1], np.int32),
                s_weight=np.ones(3, np.float32), e_indptr=np.array([0, 1, 3], np.int64),
                e_sentences=np.array([0, 0, 1], np.int32), e_weight=np.ones(3, np.float32),
                reset_s=np.array([1, 0], np.float32), reset_e=np.zeros(2, np.float32), restart=0.5, iterations=10))
    norm = native_normalizer()
    mutate("Linker", lambda **k: _core.Linker(norm, k["blob"], k["offsets"], k["entity_ids"], k["priors"]),
           dict(blob=b"abcd", offsets=np.array([0, 2, 4], np.int64), entity_ids=np.array([0, 1], np.int64),
                priors=np.array([1.0, 0.5], np.float32)))
    mutate("quant_encode_rows", lambda **k: _core.quant_encode_rows(**k),
           dict(x=np.ones((4, 16), np.float32), scheme="int4", group_size=8))
    mutate("quant_encode_columns", lambda **k: _core.quant_encode_columns(**k),
           dict(x=np.ones((4, 16), np.float32), scheme="int4", indptr=np.array([0, 2, 4], np.int64)))
    for scheme in ("int8", "int4", "int2", "fp8"):
        mutate(f"quant_gather_decode {scheme}", lambda **k: _core.quant_gather_decode(**k), decode_args(scheme))
    for scheme, dims in (("int4", (1, 3, 5, 7)), ("int2", (1, 2, 3, 6, 10)), ("int8", (0,)), ("fp8", (-4,))):
        for d in dims:  # issue 17: these read past the code row (SIGSEGV at a guard page)
            out.append((f"quant_gather_decode {scheme} head_dim {d}", lambda **k: _core.quant_gather_decode(**k),
                        {**decode_args(scheme, 8), "head_dim": d}, "ValueError"))
    for fmt in ("int8", "int4", "fp16"):
        a = attention_args("int8" if fmt == "fp16" else fmt)
        if fmt == "fp16":
            a.update(bank_k=np.zeros((6, 2, 16), np.float16), bank_v=np.zeros((6, 2, 16), np.float16),
                     bank_format="fp16", k_scale=None, v_scale=None)
        mutate(f"prefix_attention {fmt}", lambda **k: _core.prefix_attention(**k), a)
    mutate("prefix_gather int8", lambda **k: _core.prefix_gather(**k), gather_args())
    rng = np.random.default_rng(1)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mutate("decode_attention", lambda **k: _core.decode_attention(**k),
           dict(query=f(2, 4, 1, 16), inj_k=f(2, 2, 5, 16), inj_v=f(2, 2, 5, 16), inj_valid=np.ones((2, 5), np.uint8),
                own_k=f(2, 2, 3, 16), own_v=f(2, 2, 3, 16), own_mask=np.ones((2, 1, 3), np.uint8),
                out=np.zeros((2, 4, 1, 16), np.float32), lse=np.zeros((2, 4, 1), np.float32), scale=0.25,
                segment=np.zeros((2, 5), np.int32), seg_lse=np.zeros((2, 4, 1, 3), np.float32)))
    bad_dim = attention_args("int4", D=16)
    out.append(("prefix_attention int4 group 3", lambda **k: _core.prefix_attention(**k),
                {**bad_dim, "group_size": 3}, "ValueError"))
    return out


CASES = cases()


def run_in_child(selected):
    """Run ``selected`` cases in a forked child; returns ({index: outcome}, how it crashed or None, last case
    started)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report each case before and after it runs
        faulthandler.disable()  # a crash is this harness's result, not a traceback on the terminal
        os.close(r)
        with os.fdopen(w, "w", buffering=1) as out:
            for i in selected:
                name, fn, kwargs, _ = CASES[i]
                out.write(json.dumps({"start": i}) + "\n")
                try:
                    fn(**kwargs)
                    res = "ok"
                except Exception as e:  # noqa: BLE001 -- the type is the result
                    res = type(e).__name__
                out.write(json.dumps({"done": i, "result": res}) + "\n")
        os._exit(0)
    os.close(w)
    results, last = {}, None
    with os.fdopen(r) as inp:
        for line in inp:
            msg = json.loads(line)
            if "start" in msg:
                last = msg["start"]
            else:
                results[msg["done"]] = msg["result"]
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return results, signal.Signals(os.WTERMSIG(status)).name, last
    if os.WEXITSTATUS(status) != 0 or len(results) < len(selected):  # under ASan a fault ends in exit(1)
        return results, f"exit status {os.WEXITSTATUS(status)} (sanitizer report?)", last
    return results, None, last


def test_every_binding_rejects_every_invalid_layout_without_a_signal():
    remaining, crashes, results = list(range(len(CASES))), [], {}
    while remaining:  # a crash skips one case and the child restarts after it: every case runs, every crash counts
        got, sig, last = run_in_child(remaining)
        results.update(got)
        if sig is None:
            break
        crashes.append(f"{CASES[last][0]}: {sig}")
        remaining = remaining[remaining.index(last) + 1:]
    assert not crashes, "native calls died by signal:\n" + "\n".join(crashes)
    wrong = []
    for i, (name, _, _, want) in enumerate(CASES):
        got = results[i]
        if want == REJECTED and got not in ALLOWED or want not in (None, REJECTED) and got != want \
                or want is None and got not in ALLOWED + ("ok",):
            wrong.append(f"{name}: {got} (want {want or ' / '.join(ALLOWED)})")
    assert not wrong, "\n".join(wrong)
    assert sum(c[3] == REJECTED for c in CASES) > 100  # most mutations hit an index or a count
    invalid = [i for i, c in enumerate(CASES) if c[3] in (None, REJECTED)]
    rejected = sum(results[i] in ALLOWED for i in invalid)
    assert rejected > 0.8 * len(invalid), f"only {rejected} of {len(invalid)} invalid calls were rejected"
    assert len(CASES) > 300


def test_the_harness_counts_a_real_crash():
    CASES.append(("deliberate segfault", lambda: os.kill(os.getpid(), signal.SIGSEGV), {}, "ok"))
    try:
        _, sig, last = run_in_child([len(CASES) - 1])
    finally:
        CASES.pop()
    assert sig is not None and last == len(CASES)  # SIGSEGV natively; ASan's report and exit(1) under KVI_SANITIZE


@pytest.mark.parametrize("scheme, head_dim", [("int4", 3), ("int4", 5), ("int2", 2), ("int2", 6)])
def test_decode_head_dims_that_split_a_code_byte(scheme, head_dim):
    with pytest.raises(ValueError, match="whole code bytes"):
        _core.quant_gather_decode(**{**decode_args(scheme, 8), "head_dim": head_dim})
