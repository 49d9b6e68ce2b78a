import numpy as np
import pytest

import kvi_engine as kvi
from kvi_engine import _core, dispatch
from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.formats.container import FormatError
from kvi_engine.graph import twin as graph_twin
from kvi_engine.graph.knowledge_graph import KnowledgeGraph

BACKENDS = ["cpp", "reference"]

CAPS = [
    Capsule("SFTSV", "causes", "fever", "d1:s1", "SFTSV infection causes fever."),
    Capsule("SFTSV", "is_a", "virus", kind="anchor"),
    Capsule("SFTS virus", "transmitted_by", "ticks", "d1:s2", "SFTS virus is transmitted by ticks."),
    Capsule("fever", "treated_by", "rest", "d1:s1", "SFTSV infection causes fever."),
    Capsule("ticks", "located_in", "grassland"),
]
ENTS = [Entity("SFTSV", "", ("SFTS virus",)), Entity("grassland", "habitat")]


@pytest.fixture(params=BACKENDS)
def graph(request):
    return KnowledgeGraph.from_capsules(CAPS, ENTS, backend=request.param)


def test_build_ids_provenance_and_capsule_map(graph):
    assert (graph.num_entities, graph.num_triples, graph.num_relations) == (5, 4, 4)
    # given entities first, then subjects/objects by first appearance; an anchor's type is not an entity
    assert [graph.entity_name(i) for i in range(5)] == ["SFTSV", "grassland", "fever", "ticks", "rest"]
    sftsv = graph.entity_id("SFTSV")
    assert graph.entity_id("SFTS virus") == sftsv  # an alias of one entity resolves to it
    assert graph.entity(sftsv) == Entity("SFTSV", "virus", ("SFTS virus",))  # type taken from the anchor
    assert graph.relations == ["causes", "transmitted_by", "treated_by", "located_in"]
    # triple t is the t-th non-anchor capsule; capsule_index maps back into the input list
    assert graph.capsule_index([0, 1, 2, 3]).tolist() == [0, 2, 3, 4]
    assert graph.anchor_capsule_index([sftsv, graph.entity_id("fever")]).tolist() == [1, -1]
    s, r, o, k = graph.triple(1)
    assert (s, graph.relations[r], graph.entity_name(o)) == (sftsv, "transmitted_by", "ticks")
    assert graph.sentence(k) == ("d1:s2", "SFTS virus is transmitted by ticks.")
    assert graph.triple(0)[3] == graph.triple(2)[3]  # one sentence, stored once
    assert graph.triple(3)[3] == -1
    assert graph.capsule(2) == Capsule("fever", "treated_by", "rest", "d1:s1", "SFTSV infection causes fever.")
    with pytest.raises(IndexError):
        graph.triple(4)
    with pytest.raises(KeyError):
        graph.entity_id("nobody")


def test_two_hop_traversal_and_paths(graph):
    tr = graph.traverse(["SFTSV"], max_hops=2)
    assert tr.triple_ids.tolist() == [0, 1, 2, 3]
    assert tr.hops.tolist() == [1, 1, 2, 2]
    assert tr.parents.tolist() == [-1, -1, 0, 1]
    assert tr.path(3) == [1, 3]
    back = graph.traverse(["grassland"], max_hops=3, direction="in")
    assert back.triple_ids.tolist() == [3, 1] and back.hops.tolist() == [1, 2]
    only = graph.traverse(["SFTSV"], max_hops=2, relations=[{"causes"}, {"treated_by"}])
    assert only.triple_ids.tolist() == [0, 2]
    assert graph.traverse(["SFTSV"], 2, relations={"no_such_relation"}).triple_ids.tolist() == []
    assert graph.traverse(["SFTSV"], 2, fanout=1).triple_ids.tolist() == [0, 2]
    assert graph.traverse(["SFTSV"], 2, max_candidates=3).triple_ids.tolist() == [0, 1, 2]


def test_traverse_rejects_bad_arguments(graph):
    with pytest.raises(IndexError, match="outside"):
        graph.traverse([99])
    with pytest.raises(IndexError):
        graph.traverse([-1])
    with pytest.raises(ValueError, match="direction"):
        graph.traverse([0], direction="sideways")
    with pytest.raises(ValueError, match="per-hop"):
        graph.traverse([0], max_hops=3, relations=[{"causes"}, None])
    with pytest.raises(ValueError, match="relation"):
        graph.traverse([0], relations={17})
    with pytest.raises(ValueError, match="max_hops"):
        graph.traverse([0], max_hops=-1)
    with pytest.raises(TypeError):
        graph.traverse([1.5])


def test_save_load_roundtrip_is_memory_mapped(graph, tmp_path):
    path = graph.save(tmp_path / "bank" / "graph")
    for backend in BACKENDS:
        g = KnowledgeGraph.load(tmp_path / "bank" / "graph", backend=backend)
        assert g.backend == backend
        assert isinstance(g.subjects.base, np.memmap) or isinstance(g.subjects, np.memmap)
        assert [g.triple(t) for t in range(4)] == [graph.triple(t) for t in range(4)]
        assert g.entities == graph.entities and g.relations == graph.relations
        assert g.capsule_index([0, 3]).tolist() == [0, 4]
        assert g.traverse(["SFTSV"], 2, direction="both").triple_ids.tolist() == \
            graph.traverse(["SFTSV"], 2, direction="both").triple_ids.tolist()
    assert path.name == "graph.kvig"


def test_build_csr_matches_twin():
    rng = np.random.default_rng(0)
    for n, k in ((0, 0), (0, 3), (1, 1), (97, 5), (1000, 53)):
        key = rng.integers(0, max(k, 1), n).astype(np.int32)
        a, b = _core.build_csr(key, k), graph_twin.build_csr(key, k)
        assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
    for fn in (_core.build_csr, graph_twin.build_csr):
        with pytest.raises(ValueError, match="outside"):
            fn(np.array([0, 3], np.int32), 3)
        with pytest.raises(TypeError):
            fn(np.array([0, 1], np.int64), 3)  # noconvert: wrong dtype is an error, not a copy


def test_core_graph_rejects_inconsistent_arrays():
    g = KnowledgeGraph.from_capsules(CAPS)
    a = {k: np.array(v) for k, v in g._a.items()}
    args = lambda **kw: [kw.get(k, a[k]) for k in ("subj", "rel", "obj", "out_indptr", "out_triples", "in_indptr",
                                                   "in_triples")] + [g.num_entities, g.num_relations]
    for cls in (_core.Graph, graph_twin.GraphTwin):
        cls(*args())
        with pytest.raises(TypeError):
            cls(*args(subj=a["subj"].astype(np.int64)))
        with pytest.raises(ValueError):
            cls(*args(obj=np.array([0, 1, 2, 99], np.int32)))
        bad = a["out_triples"].copy()
        bad[0] = bad[1]
        with pytest.raises(ValueError):
            cls(*args(out_triples=bad))
        with pytest.raises(ValueError):
            cls(*args(in_indptr=a["in_indptr"][::-1].copy()))


def test_dispatch_and_public_names(monkeypatch):
    assert kvi.KnowledgeGraph is KnowledgeGraph
    assert dispatch.backends("graph") == {"cpp": True, "reference": True}
    assert KnowledgeGraph.from_capsules(CAPS).backend == "cpp"
    monkeypatch.setenv("KVI_BACKEND_GRAPH", "reference")
    assert KnowledgeGraph.from_capsules(CAPS).backend == "reference"


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        KnowledgeGraph.load(tmp_path)
    (tmp_path / "graph.kvig").write_bytes(b"")
    with pytest.raises(FormatError, match="truncated"):
        KnowledgeGraph.load(tmp_path)
    kvi.EntityLinker.from_entities(ENTS).save(tmp_path / "graph.kvig")
    with pytest.raises(FormatError, match="not a kvi-graph file"):
        KnowledgeGraph.load(tmp_path)
