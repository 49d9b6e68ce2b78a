"""Distributed ingestion on a local Ray cluster against single-process build_assets: the sample corpus, a slice of
real documents with open extraction, and a corpus built so that shards disagree with each other."""
import functools

import pytest

from kvi_engine import distributed
from kvi_engine.capsules.capsule import Entity, load_entities
from kvi_engine.ingest import RuleExtractor, build_assets, load_documents
from kvi_engine.ingest.documents import Document
from kvi_engine.utils.paths import sample_dir

OPEN = functools.partial(RuleExtractor, require_known_entities=False)   # unknown arguments become new entities


def same(a, b) -> None:
    assert [(s.id, s.doc_id, s.text) for s in a.store] == [(s.id, s.doc_id, s.text) for s in b.store]
    assert a.capsules == b.capsules
    assert a.entities == b.entities
    assert a.rejections == b.rejections


def test_sample_corpus(ray_cluster):
    docs = load_documents(sample_dir() / "docs.jsonl")
    ents = load_entities(sample_dir() / "entities.jsonl")
    want = build_assets(docs, ents)
    assert len(want.capsules) == 56
    same(distributed.build_assets(docs, ents, shard_docs=5, progress=False), want)   # 6 shards of 28 documents


def test_shards_that_disagree_merge_as_one_process(ray_cluster):
    """The same triple and differently spelled new entities in different shards: the merge drops the later
    duplicate and folds the spellings the way one process does -- concatenating per-shard results does not."""
    texts = ["Zorblat Works was founded by Mira Quell.", "Velm is located in Ostria.",
             "Zorblat Works was founded by Mira Quell.", "The zorblat works is located in Velm.",
             "Mira quell works for Zorblat Works."]
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    want = build_assets(docs, [], OPEN([]))
    naive = [c for i in range(len(docs)) for c in build_assets(docs[i:i + 1], [], OPEN([])).capsules]
    assert naive != want.capsules   # the case is not trivial
    same(distributed.build_assets(docs, [], make_extractor=OPEN, shard_docs=1, progress=False), want)


def test_real_documents_open_extraction(ray_cluster):
    from kvi_engine.testing import realdata

    docs = load_documents(realdata.shared_set("2wikimultihopqa_dev200") / "docs.jsonl")[:400]
    ents = [Entity(d.title) for d in docs if d.title]
    want = build_assets(docs, ents, OPEN(ents))
    assert len(want.capsules) > 100 and len(want.entities) > len(set(ents))
    same(distributed.build_assets(docs, ents, make_extractor=OPEN, shard_docs=37, progress=False), want)


def test_errors_inside_tasks_are_the_users(ray_cluster):
    docs = [Document("a", "One sentence."), Document("a", "Same id again.")]
    with pytest.raises(ValueError, match="duplicate sentence id 'a:s1'"):
        distributed.build_assets(docs, [], shard_docs=1, progress=False)


def test_a_task_whose_worker_dies_is_retried(ray_cluster, tmp_path):
    """The first task to start ends its worker process (os._exit); Ray's task retry reruns it and the assets are
    those of one process."""
    from kvi_engine.distributed.faults import exit_once
    from kvi_engine.distributed.ingest import _ingest_shard
    from kvi_engine.ingest.assets import assemble_assets
    from kvi_engine.ingest.entities import merge_entities
    docs = load_documents(sample_dir() / "docs.jsonl")
    merged, _ = merge_entities(load_entities(sample_dir() / "entities.jsonl"))
    flag = tmp_path / "flag"
    parts = distributed.map_shards(functools.partial(exit_once, str(flag), _ingest_shard), docs, 10,
                                   args=(merged, None), progress=False)
    assert flag.is_file()   # a worker did die
    same(assemble_assets(parts, merged), build_assets(docs, merged))


def test_open_ingestion_on_ray_equals_one_process(ray_cluster):
    """No entity list: spaCy's analysis of real paragraphs in Ray tasks (shards of 9 documents), the assembly on the
    driver -- the same sentences, entities, triples and sentence capsules as one process."""
    from kvi_engine.ingest.assets import build_open_assets
    from kvi_engine.testing import realdata

    realdata.pipeline()
    docs = realdata.documents("2wikimultihopqa_dev200")[:40]
    want = build_open_assets(docs)
    assert len(want.entities) > 40 and sum(c.kind == "triple" for c in want.capsules) > 10
    got = distributed.build_open_assets(docs, shard_docs=9, progress=False)
    same(got, want)
    assert got.notes == want.notes


def test_kvi_ingest_ray_writes_the_same_assets(ray_cluster, tmp_path, capsys):
    from kvi_engine.cli.main import main
    from kvi_engine.testing import realdata

    realdata.pipeline()
    lines = (realdata.shared_set("musique_ans_dev100") / "docs.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for out, extra in (("one", []), ("ray", ["--ray", "--shard-docs", "6"])):
        assert main(["ingest", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / out), *extra]) == 0
    for name in ("sentences.jsonl", "capsules.jsonl", "entities.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    assert "20 documents ->" in capsys.readouterr().out
