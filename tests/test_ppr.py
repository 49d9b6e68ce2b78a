"""Personalised PageRank over the mention graph: the C++ core against its numpy twin, both against a dense
matrix-power reference built independently from the (sentence, entity) pairs; bad layouts raise."""
import numpy as np
import pytest

from kvi_engine import dispatch
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.graph.ppr import MentionWalk, ppr_reference

BACKENDS = ["reference"] + (["cpp"] if dispatch.core_has("ppr") else [])


def random_graph(rng, S, N, density):
    caps = []
    for s in range(S):
        ents = [f"e{e}" for e in range(N) if rng.random() < density]
        caps.append(Capsule(f"d{s % 7}", "states", f"d{s % 7}:s{s}", f"d{s % 7}:s{s}", f"sentence {s}",
                            kind="sentence", entities=tuple(ents)))
    return KnowledgeGraph.from_capsules(caps)


def dense_reference(g, reset_s, reset_e, a, iters):
    """The walk as one (S+N)x(S+N) transition matrix, built from the mention pairs alone."""
    m = g.mentions
    S, N = g.num_sentences, g.num_entities
    pairs = [(s, int(e)) for s in range(S) for e in m.of_sentence(s)]
    df = np.zeros(N)
    for _, e in pairs:
        df[e] += 1
    n_caps = int((m.capsule >= 0).sum())
    idf = np.log1p(n_caps / np.maximum(df, 1))
    P = np.zeros((S + N, S + N))
    for s in range(S):
        es = [e for t, e in pairs if t == s]
        tot = sum(idf[e] for e in es)
        for e in es:
            P[s, S + e] = idf[e] / tot
    for s, e in pairs:
        P[S + e, s] = 1 / df[e]
    r = np.concatenate([reset_s, reset_e]).astype(np.float64)
    p = r.copy()
    for _ in range(iters):
        p = a * r + (1 - a) * P.T @ p
    return p[:S], p[S:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S,N,density", [(1, 1, 1.0), (17, 5, 0.3), (53, 29, 0.08), (97, 3, 0.5)])
def test_walk_matches_dense_reference(backend, S, N, density):
    rng = np.random.default_rng(S * 31 + N)
    g = random_graph(rng, S, N, density)
    w = MentionWalk(g.mentions, backend=backend)
    reset_s = np.zeros(g.num_sentences, np.float32)
    reset_e = rng.random(g.num_entities).astype(np.float32)
    reset_s[rng.integers(g.num_sentences)] = 0.5
    for a, iters in ((0.2, 15), (1.0, 3), (0.5, 0)):
        ps, pe = w.run(reset_s, reset_e, a, iters)
        rs, re_ = dense_reference(g, reset_s, reset_e, a, iters)
        np.testing.assert_allclose(ps, rs, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pe, re_, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="kvi_engine._core without ppr")
def test_cpp_equals_twin_on_a_large_graph():
    rng = np.random.default_rng(5)
    S, N, M = 5000, 2000, 30000
    s = rng.integers(0, S, M).astype(np.int32)
    e = (rng.zipf(1.5, M) % N).astype(np.int32)
    caps = [Capsule("d", "states", f"d:s{k}", f"d:s{k}", "x", kind="sentence",
                    entities=tuple(f"e{x}" for x in sorted(set(e[s == k].tolist())))) for k in range(S)]
    g = KnowledgeGraph.from_capsules(caps)
    a, b = MentionWalk(g.mentions, backend="cpp"), MentionWalk(g.mentions, backend="reference")
    reset_e = np.zeros(g.num_entities, np.float32)
    reset_e[:3] = [0.5, 0.3, 0.2]
    reset_s = np.zeros(g.num_sentences, np.float32)
    for x, y in zip(a.run(reset_s, reset_e, 0.2, 15), b.run(reset_s, reset_e, 0.2, 15)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_layouts_raise(backend):
    _, run = dispatch.select("graph.ppr", backend)
    ip = np.array([0, 1], np.int64)
    ents = np.array([0], np.int32)
    wt = np.array([1.0], np.float32)
    one = np.array([1.0], np.float32)
    good = [ip, ents, wt, ip, ents, wt, one, one]
    run(*good, 0.2, 3)
    for i, bad in [(1, np.array([1], np.int32)), (0, np.array([0, 2], np.int64)), (2, np.array([1.0])),
                   (6, np.ones((1, 1), np.float32))]:
        args = list(good)
        args[i] = bad
        with pytest.raises((ValueError, TypeError)):
            run(*args, 0.2, 3)
    with pytest.raises(ValueError):
        run(*good, 0.0, 3)
    with pytest.raises(ValueError):
        run(*good, 0.2, -1)


def test_twin_is_the_registered_reference():
    assert dispatch.select("graph.ppr", "reference")[1] is ppr_reference
