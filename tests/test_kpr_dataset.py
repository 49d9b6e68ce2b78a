"""The committed KPR retrieval set is what the generator produces, and it has no lexical shortcuts."""
import json

import pytest

from kvi_engine.kpr.make_dataset import _words, generate
from kvi_engine.utils.paths import kpr_data_dir

DATA = kpr_data_dir()


@pytest.fixture(scope="module")
def data():
    return generate(7)


def test_committed_files_match_the_generator(data):
    for name, rows in data.items():
        lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(x) for x in lines] == rows, f"{name}.jsonl is stale: rerun make_dataset"
    assert generate(7) == data and generate(8)["test"] != data["test"]


def test_no_word_overlap_and_held_out_entities(data):
    corpus = {c["id"]: c for c in data["corpus"]}
    answers = {}
    for c in data["corpus"]:
        answers[c["id"]] = c["text"]
    alias = [q for q in data["test"] if q["subset"] == "alias"]
    assert len(alias) >= 500 and len(alias) * 2 == len(data["test"])
    for q in alias + data["train"]:
        pid = q["positives"][0] if "positives" in q else q["positive"]
        assert not _words(q["query"]) & _words(corpus[pid]["text"]), q
        assert corpus[pid]["subject"] not in q["query"]
    train_subjects = {corpus[t["positive"]]["subject"] for t in data["train"]}
    test_subjects = {corpus[q["positives"][0]]["subject"] for q in data["test"]}
    assert not train_subjects & test_subjects
    known = {e["name"] for e in data["entities_train"]}
    assert not test_subjects & known and train_subjects <= known
    assert {e["name"] for e in data["entities"]} >= known | test_subjects
