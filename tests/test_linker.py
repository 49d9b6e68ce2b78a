"""Entity linker: edge cases on both backends, and the C++ core against its Python twin on random texts."""
import numpy as np
import pytest

import kvi_engine as kvi
from kvi_engine.capsules.capsule import Entity
from kvi_engine.formats.container import FormatError
from kvi_engine.graph import normalize as nt
from kvi_engine.graph.linker import EntityLinker, Mention

BACKENDS = ["cpp", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def build(rows, backend, priors=None):
    names = [n for n, _ in rows]
    ids = np.array([e for _, e in rows], np.int64)
    return EntityLinker.build(names, ids, None if priors is None else np.array(priors, np.float32), backend=backend)


def spans(linker, text, **kw):
    return [(m.text, [e for e, _ in m.candidates]) for m in linker.link([text], **kw)[0]]


def test_word_boundaries(backend):
    l = build([("us", 0), ("York", 1), ("art", 2)], backend)
    assert spans(l, "Houston, USA, us, trust") == [("us", [0])]
    assert spans(l, "New Yorker; York.") == [("York", [1])]
    assert spans(l, "art-deco, (art), martial") == [("art", [2]), ("art", [2])]
    assert spans(l, "us") == [("us", [0])]


def test_longest_match_and_prefix_names(backend):
    l = build([("New York", 0), ("New York City", 1), ("New", 2), ("York City Hall", 3), ("City Hall", 4)], backend)
    assert spans(l, "new york city hall") == [("new york city", [1])]  # no overlap with "York City Hall"
    assert spans(l, "New  York, New Jersey") == [("New  York", [0]), ("New", [2])]
    assert spans(l, "New Yorkshire") == [("New", [2])]  # a longer name that ends mid-word does not count


def test_overlapping_aliases_and_candidates(backend):
    l = build([("Paris", 0), ("Paris", 1), ("paris", 1), ("Paris Hilton", 2), ("Hilton", 3)], backend)
    m = l.link(["Paris Hilton stayed at the Hilton in PARIS."])[0]
    assert [(x.start, x.end, x.text) for x in m] == [(0, 12, "Paris Hilton"), (27, 33, "Hilton"), (37, 42, "PARIS")]
    assert m[2].candidates == [(0, 0.5), (1, 0.5)]  # without priors: uniform over distinct entities


def test_priors_thresholds_and_order(backend):
    l = build([("Jordan", 7), ("Jordan", 3), ("Michael Jordan", 9), ("Michael", 5)], backend, [0.2, 0.7, 0.05, 0.9])
    m = l.link(["Michael Jordan and Jordan"])[0]
    assert m[1].candidates == [(3, pytest.approx(0.7)), (7, pytest.approx(0.2))]
    # "Michael Jordan" (0.05) falls below the threshold, so the shorter names match instead
    assert spans(l, "Michael Jordan and Jordan", min_prior=0.1) == [("Michael", [5]), ("Jordan", [3, 7]),
                                                                       ("Jordan", [3, 7])]
    assert spans(l, "Michael Jordan and Jordan", min_prior=0.5) == [("Michael", [5]), ("Jordan", [3]), ("Jordan", [3])]
    assert spans(l, "Jordan", min_prior=0.95) == []


def test_accents_compatibility_forms_and_case(backend):
    l = build([("Café", 0), ("Straße", 1), ("ﬁnance", 2), ("İstanbul", 3)], backend)
    text = "CAFE\u0301 cafe Strasse ＦＩＮＡＮＣＥ i\u0307stanbul"
    m = l.link([text])[0]
    assert [(x.text, x.candidates[0][0]) for x in m] == [("CAFE\u0301", 0), ("Strasse", 1), ("ＦＩＮＡＮＣＥ", 2),
                                                         ("i\u0307stanbul", 3)]
    assert spans(l, "Cafe") == []  # accents are kept: Café and Cafe are different names


def test_cjk_and_mixed_scripts(backend):
    l = build([("東京", 0), ("東京タワー", 1), ("京都", 2), ("Tokyo", 3)], backend)
    text = "私は東京タワーと京都に行った。東京は大きい。Tokyo"
    m = l.link([text])[0]
    assert [(x.start, x.end, x.text) for x in m] == [(2, 7, "東京タワー"), (8, 10, "京都"), (15, 17, "東京"), (22, 27, "Tokyo")]
    assert all(text[x.start:x.end] == x.text for x in m)


def test_empty_and_degenerate_texts(backend):
    l = build([("a b", 0)], backend)
    assert l.link([]) == []
    assert l.link(["", " ", "\u200b", "a\u00adb"]) == [[], [], [], []]
    assert spans(l, "A\tB") == [("A\tB", [0])]
    assert spans(l, "\ud800 a b \ud800") == [("a b", [0])]  # lone surrogates pass through as characters


def test_bad_input_raises(backend):
    with pytest.raises(ValueError, match="row 1 is empty"):
        build([("ok", 0), ("?!", 1)], backend)
    with pytest.raises(ValueError, match="negative"):
        build([("x", -1)], backend)
    with pytest.raises(ValueError, match="prior"):
        build([("x", 1)], backend, [float("nan")])
    with pytest.raises(TypeError):
        EntityLinker.build(["x"], np.array([0], np.int32), backend=backend)
    with pytest.raises(TypeError):
        EntityLinker.build(["x"], np.array([0], np.int64), np.array([1.0]), backend=backend)
    with pytest.raises(ValueError):
        EntityLinker.build(["x", "y"], np.array([0], np.int64), backend=backend)
    l = build([("x", 0)], backend)
    with pytest.raises(TypeError):
        l.link("x")
    with pytest.raises(TypeError):
        l.link([b"x"])


def test_from_entities_save_load(backend, tmp_path):
    ents = [Entity("SFTSV", "virus", ("SFTS virus", "sftsv")), Entity("Houston"), Entity("US", aliases=("U.S.",))]
    l = EntityLinker.from_entities(ents, backend=backend)
    assert len(l) == 6 and l.num_keys == 5 and kvi.EntityLinker is EntityLinker
    texts = ["The SFTS virus (SFTSV) reached Houston, U.S.-based labs said.", "us"]
    l.save(tmp_path / "linker.kvil")
    for b in BACKENDS:
        assert EntityLinker.load(tmp_path / "linker.kvil", backend=b).link(texts) == l.link(texts)
    assert [m.text for m in l.link(texts)[0]] == ["SFTS virus", "SFTSV", "Houston", "U.S"]
    g = kvi.KnowledgeGraph.from_capsules([], ents)
    assert EntityLinker.from_graph(g, backend=backend).link(texts) == l.link(texts)
    (tmp_path / "bad").write_bytes(b"KVISECT\0" + b"\xff" * 40)  # shorter than any container header
    with pytest.raises(FormatError, match="retired 'KVISECT'.*rebuild"):
        EntityLinker.load(tmp_path / "bad", backend=backend)
    (tmp_path / "old").write_bytes(b"KVISECT\0" + b"\x00" * 4096)  # a whole old file: same message
    with pytest.raises(FormatError, match="retired 'KVISECT'.*rebuild"):
        EntityLinker.load(tmp_path / "old", backend=backend)


ALPHABET = list("abcAB  .-,") + ["é", "e\u0301", "ß", "東", "京", "ﬁ", "\u00ad", "İ", "\t", "Ⅻ", "😀"]


def random_text(rng, k):
    return "".join(rng.choice(ALPHABET, k))


def test_core_matches_twin_on_random_texts():
    rng = np.random.default_rng(0)
    for trial in range(6):
        names = [random_text(rng, rng.integers(1, 6)) for _ in range(300)]
        names = [n for n in names if nt.normalize_name(n)]
        ids = rng.integers(0, 50, len(names)).astype(np.int64)
        priors = None if trial % 2 else rng.random(len(names)).astype(np.float32)
        cpp = EntityLinker.build(names, ids, priors, backend="cpp")
        ref = EntityLinker.build(names, ids, priors, backend="reference")
        assert cpp.num_keys == ref.num_keys
        texts = [random_text(rng, rng.integers(0, 80)) for _ in range(200)]
        for min_prior in (0.0, 0.3):
            a = cpp.link_arrays(texts, min_prior=min_prior)
            b = ref.link_arrays(texts, min_prior=min_prior)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert sum(len(m) for m in cpp.link(texts)) > 50  # the comparison saw real matches
        assert cpp.link(texts, num_threads=2) == cpp.link(texts, num_threads=1)


def test_native_normalizer_matches_twin():
    rng = np.random.default_rng(1)
    norm = nt.native_normalizer()
    texts = [random_text(rng, 40) for _ in range(300)]
    # plus random code points from the whole range (surrogates included)
    texts += ["".join(map(chr, rng.integers(0, 0x110000, 30))) for _ in range(300)]
    for t in texts:
        cps, begin, end = norm.normalize(t.encode("utf-8", "surrogatepass"))
        want, wb, we = nt.normalize(t)
        assert "".join(map(chr, cps)) == want and begin.tolist() == wb and end.tolist() == we, repr(t)
    with pytest.raises(ValueError, match="UTF-8"):
        norm.normalize(b"\xff")


def test_mention_is_a_small_dataclass():
    m = Mention(0, 2, "us", [(1, 1.0)])
    assert (m.start, m.end, m.text, m.candidates) == (0, 2, "us", [(1, 1.0)])
