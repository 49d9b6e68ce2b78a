"""Bad input never crashes the native core: damaged graph/linker files and random linker rows raise clean
errors (FormatError / ValueError / TypeError) or, where the damage is harmless, load into something usable.
Several thousand cases; run under the ASan/UBSan build (KVI_SANITIZE=1) as well."""
import msgpack
import numpy as np
import pytest

from kvi_engine import _core
from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.formats.container import _PREAMBLE, MAGIC, Container, FormatError, write_container
from kvi_engine.graph.knowledge_graph import GRAPH_VERSION, KnowledgeGraph
from kvi_engine.graph.linker import EntityLinker
from kvi_engine.graph.normalize import native_normalizer

CAPS = [Capsule(f"e{i % 7}", f"r{i % 3}", f"e{(i * 5 + 1) % 9}", f"s{i % 4}", f"sentence {i % 4}") for i in range(30)]
ENTS = [Entity("e0", "thing", ("zero", "nil")), Entity("e1", "", ("one",))]


def exercise(g: KnowledgeGraph) -> None:
    for e in range(min(g.num_entities, 5)):
        g.traverse([e], 3, direction="both", fanout=3)
        g.entity(e)
    for t in range(min(g.num_triples, 5)):
        g.capsule(t)


def load_or_reject(path, **kw):
    try:
        g = KnowledgeGraph.load(path, **kw)
        exercise(g)
        return True
    except FormatError:
        return False


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    path = KnowledgeGraph.from_capsules(CAPS, ENTS).save(d)
    return d, path.read_bytes()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_truncated_flipped_and_random_graph_files(saved, tmp_path, backend):
    d, good = saved
    rng = np.random.default_rng(0)
    path = tmp_path / "graph.kvig"
    accepted = 0
    for case in range(900):
        kind = case % 3
        if kind == 0:
            data = good[:rng.integers(0, len(good))]
        elif kind == 1:
            data = bytearray(good)
            for pos in rng.integers(0, len(good), rng.integers(1, 4)):
                data[pos] ^= 1 << int(rng.integers(8))
            data = bytes(data)
        else:
            data = rng.bytes(int(rng.integers(0, 600)))
            if case % 2:
                data = good[:_PREAMBLE.size] + data
        path.write_bytes(data)
        # verify=False lets corrupted arrays past the checksums, into the structural checks of the core
        accepted += load_or_reject(tmp_path, backend=backend, verify=bool(case % 5 == 0))
    assert accepted < 900


def test_consistent_checksums_inconsistent_graph(saved, tmp_path):
    d, _ = saved
    c = Container(d / "graph.kvig", "kvi-graph", (GRAPH_VERSION,))
    meta, arrays = c.meta, {n: c.array(n) for n in c.sections}
    arrays = {k: np.array(v) for k, v in arrays.items()}
    rng = np.random.default_rng(1)
    names = sorted(arrays)
    rejected = 0
    for case in range(900):
        bad = dict(arrays)
        name = names[case % len(names)]
        a = bad[name].copy()
        mode = rng.integers(4)
        if mode == 0 and a.size:
            a[rng.integers(a.size)] = rng.integers(-3, 3) if rng.random() < 0.5 else rng.integers(-2**31, 2**31)
        elif mode == 1:
            a = a[:rng.integers(0, a.size + 1)]
        elif mode == 2:
            a = a.astype(np.int64 if a.dtype != np.int64 else np.int32)
        elif a.size:
            rng.shuffle(a)
        bad[name] = a
        m = dict(meta)
        if case % 11 == 0:
            m["num_triples"] = int(rng.integers(-1, 100))
        write_container(tmp_path / "graph.kvig", "kvi-graph", GRAPH_VERSION, m, bad)
        rejected += not load_or_reject(tmp_path, backend=["cpp", "reference"][case % 2])
    assert rejected > 500


def test_forged_headers(saved, tmp_path):
    d, good = saved
    _, _, _, hoff, hlen, _ = _PREAMBLE.unpack(good[:_PREAMBLE.size])
    header = msgpack.unpackb(good[hoff:hoff + hlen])
    body = good[_PREAMBLE.size:hoff]
    rng = np.random.default_rng(2)
    import zlib
    junk = [None, -1, 2**40, "x", [], {}, [2**62, 2**62], 1.5, True]
    for case in range(600):
        h = msgpack.unpackb(msgpack.packb(header))
        field = rng.integers(5)
        if field == 0:
            h[["kind", "version", "num_entities", "sections"][case % 4]] = junk[case % len(junk)]
        else:
            name = list(h["sections"])[rng.integers(len(h["sections"]))]
            key = ["name", "dtype", "shape", "offset", "nbytes", "crc32"][case % 6]
            if key == "name":  # a forged section name (keys of the header's section map)
                bad = junk[rng.integers(len(junk))]
                h["sections"][bad if isinstance(bad, (str, int, float, bool, type(None))) else str(bad)] = \
                    h["sections"].pop(name)
            else:
                h["sections"][name][key] = junk[rng.integers(len(junk))]
        raw = msgpack.packb(h)
        preamble = _PREAMBLE.pack(MAGIC, 2, 0, _PREAMBLE.size + len(body), len(raw), zlib.crc32(raw))
        (tmp_path / "graph.kvig").write_bytes(preamble + body + raw)
        load_or_reject(tmp_path, verify=bool(case % 2))


def test_random_linker_rows_and_files(tmp_path):
    rng = np.random.default_rng(3)
    alphabet = list("ab .-é\u0301東\u00ad\t") + ["\ud800", "ﬁ", "", "😀"]
    norm = native_normalizer()
    for case in range(1200):
        n = int(rng.integers(0, 6))
        names = ["".join(rng.choice(alphabet, rng.integers(0, 5))) for _ in range(n)]
        ids = rng.integers(-1 if case % 7 == 0 else 0, 5, n).astype(np.int64)
        priors = None
        if case % 2:
            priors = rng.choice([0.0, 0.5, 1.0, 3.0, -1.0, np.nan, np.inf], n).astype(np.float32)
        backend = ["cpp", "reference"][case % 2]
        try:
            linker = EntityLinker.build(names, ids, priors, backend=backend)
        except ValueError:
            continue
        texts = ["".join(rng.choice(alphabet, rng.integers(0, 20))) for _ in range(3)]
        assert len(linker.link(texts, min_prior=float(rng.random()))) == 3
    for case in range(600):  # raw rows straight into the core: invalid UTF-8, broken offsets
        blob = rng.bytes(int(rng.integers(0, 12)))
        cuts = np.sort(rng.integers(0, len(blob) + 1, 2))
        offsets = np.array([0, *cuts, len(blob)] if case % 3 else [0, *cuts[::-1], len(blob)], np.int64)
        if case % 5 == 0:
            offsets[1] = len(blob) + int(rng.integers(1, 1000))  # points past the blob, later ones come back
        try:
            _core.Linker(norm, blob, offsets, np.arange(3, dtype=np.int64))
        except ValueError:
            pass
        with pytest.raises(ValueError):
            _core.Linker(norm, blob, offsets[:-1], np.arange(3, dtype=np.int64))
    linker = EntityLinker.build(["ab", "b"], np.array([0, 1], np.int64))
    for case in range(300):
        try:
            linker._core.link_batch([rng.bytes(int(rng.integers(0, 16)))], 0.0, 1)
        except ValueError as e:
            assert "UTF-8" in str(e)
    linker.save(tmp_path / "l.kvil")
    good = (tmp_path / "l.kvil").read_bytes()
    for case in range(400):
        data = bytearray(good[:rng.integers(0, len(good) + 1)])
        if data and case % 2:
            data[rng.integers(len(data))] ^= 0xFF
        (tmp_path / "x.kvil").write_bytes(bytes(data))
        try:
            EntityLinker.load(tmp_path / "x.kvil", backend=["cpp", "reference"][case % 2])
        except FormatError:
            pass
