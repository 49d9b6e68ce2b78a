"""Entity knowledge builder: masked contexts, ambiguity, resumability and updates that touch only affected rows."""
import numpy as np
import pytest

from kvi_engine.capsules.capsule import Entity
from kvi_engine.capsules.statements import anchor_statement
from kvi_engine.kpr.builder import build_knowledge, build_linker, collect_contexts, surface_forms
from kvi_engine.kpr.table import EntityTable
from kvi_engine.testing.kpr import HashEncoder

ENTITIES = [Entity("Kesul Bomive", "person", ("the Ashen Lantern",)), Entity("Kanolmoor", "town"),
            Entity("Sami Observatory Trust", "organisation", ("SOTV",)), Entity("Velina Morrow", "person"),
            Entity("Oriel Dask", "person", ("Dask",)), Entity("Ferro Dask", "person", ("Dask",))]
CONTEXTS = ["Kesul Bomive spent childhood years in Kanolmoor.", "The Ashen Lantern is on the payroll of SOTV.",
            "SOTV operates out of Kanolmoor.", "Dask met Kesul Bomive twice."]


def test_linker_rows_and_shared_names():
    names, ids = surface_forms(ENTITIES)
    assert names[:3] == ["Kesul Bomive", "the Ashen Lantern", "Kanolmoor"] and ids[:3].tolist() == [0, 0, 1]
    (m,), = build_linker(ENTITIES).link(["Ask dask."])
    assert (m.text, m.candidates) == ("dask", [(4, 0.5), (5, 0.5)])


def test_contexts_are_masked_and_ambiguous_mentions_skipped():
    linker = build_linker(ENTITIES)
    ctx = collect_contexts(linker, len(ENTITIES), CONTEXTS, max_contexts=8, mask_token="[MASK]")
    assert ctx[0] == ["[MASK] spent childhood years in Kanolmoor.", "[MASK] is on the payroll of SOTV.",
                      "Dask met [MASK] twice."]
    assert ctx[1] == ["Kesul Bomive spent childhood years in [MASK].", "SOTV operates out of [MASK]."]
    assert ctx[4] == ctx[5] == [] and ctx[3] == []  # "Dask" is ambiguous (prior 0.5): no context for either
    assert collect_contexts(linker, len(ENTITIES), CONTEXTS, 1, "[MASK]")[0] == ctx[0][:1]


def test_vectors_are_normalised_sums_of_context_embeddings(tmp_path):
    enc = HashEncoder()
    stats = build_knowledge(tmp_path, ENTITIES, enc, "hash", contexts=CONTEXTS, norm=3.0)
    assert stats == {"entities": 6, "reused": 0, "computed": 6, "resumed": 0, "from_contexts": 3, "from_anchors": 3}
    t = EntityTable.open(tmp_path)
    expected = enc.encode(["[MASK] spent childhood years in Kanolmoor.", "[MASK] is on the payroll of SOTV.",
                           "Dask met [MASK] twice."]).sum(0)
    np.testing.assert_allclose(t.vectors[0], 3.0 * expected / np.linalg.norm(expected), atol=3e-3)
    anchor = enc.encode([anchor_statement(ENTITIES[3])])[0]
    np.testing.assert_allclose(t.vectors[3], 3.0 * anchor, atol=3e-3)
    np.testing.assert_allclose(np.linalg.norm(t.vectors[:].astype(np.float32), axis=1), 3.0, rtol=2e-3)
    assert not (tmp_path / ".kpr_build").exists()


def test_update_recomputes_exactly_the_affected_rows(tmp_path):
    build_knowledge(tmp_path / "v1", ENTITIES, HashEncoder(), "hash", contexts=CONTEXTS)
    old = EntityTable.open(tmp_path / "v1")
    changed = Entity("Velina Morrow", "person", description="a locksmith")
    added = Entity("Ulmi Fen", "person")
    new_entities = [ENTITIES[2], changed, ENTITIES[0], added, ENTITIES[1], ENTITIES[4], ENTITIES[5]]
    enc = HashEncoder()
    stats = build_knowledge(tmp_path / "v2", new_entities, enc, "hash", contexts=CONTEXTS, previous=old)
    assert stats["reused"] == 5 and stats["computed"] == 2
    new = EntityTable.open(tmp_path / "v2")
    assert new.names == [e.name for e in new_entities]
    for e in new_entities:
        i = new.index[e.name]
        if e.name in ("Velina Morrow", "Ulmi Fen"):
            assert new.fingerprints[i] != old.fingerprints[old.index.get(e.name, 0)]
        else:
            np.testing.assert_array_equal(new.vectors[i], old.vectors[old.index[e.name]])  # bit for bit
    assert set(enc.calls) == {"probe", anchor_statement(changed), anchor_statement(added)}
    # a different encoder invalidates every row
    stats = build_knowledge(tmp_path / "v3", new_entities, HashEncoder(), "other", contexts=CONTEXTS, previous=new)
    assert stats["reused"] == 0 and stats["computed"] == 7


class Crash(HashEncoder):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def encode(self, texts):
        if texts != ["probe"]:
            self.after -= 1
            if self.after < 0:
                raise RuntimeError("simulated crash")
        return super().encode(texts)


def test_interrupted_build_resumes(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_knowledge(tmp_path / "a", ENTITIES, Crash(after=1), "hash", contexts=CONTEXTS, chunk=2)
    assert (tmp_path / "a" / ".kpr_build" / "done.npy").is_file()
    enc = HashEncoder()
    stats = build_knowledge(tmp_path / "a", ENTITIES, enc, "hash", contexts=CONTEXTS, chunk=2)
    assert stats["resumed"] == 1 and stats["computed"] == 4
    build_knowledge(tmp_path / "b", ENTITIES, HashEncoder(), "hash", contexts=CONTEXTS, chunk=2)
    np.testing.assert_array_equal(EntityTable.open(tmp_path / "a").vectors, EntityTable.open(tmp_path / "b").vectors)


def test_no_entities_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no entities"):
        build_knowledge(tmp_path, [], HashEncoder(), "hash")
