import json

import pytest

from kvi_engine.capsules.capsule import (
    Capsule,
    CapsuleFormatError,
    Entity,
    load_capsules,
    load_entities,
    save_capsules,
    save_entities,
)
from kvi_engine.capsules.statements import anchor_statement, render_statement


def test_round_trip(tmp_path):
    caps = [Capsule("SFTSV", "causes", "fever", sentence_id="d1:s3", sentence="SFTSV infection causes fever."),
            Capsule("Ticks", "transmitted_by", "bites", kind="triple")]
    save_capsules(caps, tmp_path / "c.jsonl")
    assert load_capsules(tmp_path / "c.jsonl") == caps
    ents = [Entity("SFTSV", "virus", ("SFTS virus",), "a bunyavirus"), Entity("Fever")]
    save_entities(ents, tmp_path / "e.jsonl")
    assert load_entities(tmp_path / "e.jsonl") == ents


@pytest.mark.parametrize("line, needle", [
    ('{"subject": "A", "relation": "r"}', "object"),
    ('{"subject": "A", "relation": "r", "object": "B", "sentense": "typo"}', "unknown field"),
    ('{"subject": "A", "relation": "r", "object": ""}', "object"),
    ('not json', "invalid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"subject": "A", "relation": "r", "object": "B", "kind": "fact"}', "kind"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"subject": "A", "relation": "r", "object": "B"}\n\n' + line + "\n")
    with pytest.raises(CapsuleFormatError) as e:
        load_capsules(p)
    assert f"{p}:3:" in str(e.value) and needle in str(e.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CapsuleFormatError, match="no capsules"):
        load_capsules(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_capsules(tmp_path / "nope.jsonl")


def test_duplicate_entity_and_bad_aliases(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"name": "A"}) + "\n" + json.dumps({"name": "A"}) + "\n")
    with pytest.raises(CapsuleFormatError, match="defined twice"):
        load_entities(p)
    p.write_text(json.dumps({"name": "A", "aliases": "B"}) + "\n")
    with pytest.raises(CapsuleFormatError, match=r"e.jsonl:1: aliases"):
        load_entities(p)


def test_statements():
    assert render_statement(Capsule("SFTSV", "causes", "fever")) == "SFTSV causes fever."
    assert render_statement(Capsule("Lyra", "works_at_lab", "Vesta")) == "Lyra works at lab Vesta."
    assert render_statement(Capsule("A", "r", "B"), {"r": "{object} is r of {subject}!"}) == "B is r of A!"
    assert anchor_statement(Entity("SFTSV", "virus")) == "SFTSV is a virus."
    assert anchor_statement(Entity("Oslo", "organisation")) == "Oslo is an organisation."
