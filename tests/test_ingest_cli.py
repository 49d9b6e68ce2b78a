"""`kvi ingest DOCS... --out DIR` with no entity list, on real paragraphs of the shared sets (jsonl) and on plain
.txt / .md files, and bad input: an empty document, a document with no sentences, a 10 MB single-line document,
non-UTF-8 bytes -> one clear error line (exit 2) or a documented fallback recorded in ingest.json, never a crash."""
import json

import pytest

from kvi_engine.capsules.capsule import load_capsules, load_entities
from kvi_engine.cli.main import main
from kvi_engine.testing import realdata


@pytest.fixture(scope="module", autouse=True)
def pipeline():
    realdata.pipeline()


def _error_line(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "it/s]" not in ln and "doc/s]" not in ln]
    assert len(err) == 1 and all(n in err[0] for n in needles), err


def test_ingest_real_paragraphs_and_plain_files(tmp_path, capsys):
    folder = realdata.shared_set("2wikimultihopqa_dev200")
    lines = (folder / "docs.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    (tmp_path / "wiki.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "harbour.txt").write_text("Glass Harbour is a 2003 film directed by Mara Quell. She was born in "
                                       "Tamsk. Dr. Quell studied in the U.S. state of Ohio.\n", encoding="utf-8")
    (notes / "oslo.md").write_text("# Oslo\n\nOslo is the capital of Norway. It had 709,000 inhabitants "
                                   "in 2023.\n", encoding="utf-8")
    (notes / "punct.txt").write_text("--- *** ---\n", encoding="utf-8")         # a document with no sentences
    out = tmp_path / "assets"
    assert main(["ingest", str(tmp_path / "wiki.jsonl"), str(notes), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "15 documents ->" in printed and "note: document 'punct': no sentences" in printed
    report = json.loads((out / "ingest.json").read_text())
    assert report["stats"]["documents"] == 15 and any("'punct'" in n for n in report["notes"])
    sentences = [json.loads(x) for x in (out / "sentences.jsonl").read_text().splitlines()[1:]]
    caps = load_capsules(out / "capsules.jsonl")
    ents = {e.name for e in load_entities(out / "entities.jsonl")}
    # one sentence capsule per sentence (the store's ids), in the store's order
    sent_caps = [c for c in caps if c.kind == "sentence"]
    assert report["kinds"]["sentence"] == len(sent_caps) >= 40
    assert {"Glass Harbour", "Mara Quell", "Oslo", "Norway"} <= ents and not ents & {"2023", "709,000", "harbour"}
    assert [c.sentence_id for c in sent_caps] == [s["id"] for s in sentences]
    triples = {(c.subject, c.relation, c.object): c for c in caps if c.kind == "triple"}
    assert triples[("Glass Harbour", "directed_by", "Mara Quell")].sentence_id == "harbour:s1"
    # the Markdown heading is the title: "It had ..." attaches to Oslo; the count and the year stay values
    had = [c for c in triples.values() if c.sentence_id == "oslo:s2"]
    assert had and all(c.subject == "Oslo" for c in had) and any(("CARDINAL", "709,000") in c.attributes for c in had)
    assert {"Oslo"} == set(next(c for c in sent_caps if c.sentence_id == "oslo:s2").entities)


@pytest.mark.parametrize("name, content, needles", [
    ("empty.txt", b"", ("empty.txt", "empty document")),
    ("blank.md", b" \n\n \t\n", ("blank.md", "empty document")),
    ("latin1.txt", "Caf\u00e9 Zo\u00eb opened in 1921.".encode("latin-1"), ("latin1.txt", "not UTF-8", "byte 3")),
    ("big.txt", b"word " * 2_000_000, ("document 'big'", "10,000,000 characters", "--max-doc-chars")),
])
def test_bad_documents_fail_in_one_line(tmp_path, capsys, name, content, needles):
    (tmp_path / name).write_bytes(content)
    assert main(["ingest", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_bad_jsonl_documents_fail_in_one_line(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"id": "a", "text": "Ann Lee was a painter."}\n{"id": "b", "text": "Caf\xe9"}\n')
    assert main(["ingest", str(p), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys, "d.jsonl")
    p.write_text('{"id": "a", "text": ""}\n', encoding="utf-8")
    assert main(["ingest", str(p), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys, "d.jsonl:1", "'text'")


def test_only_documents_without_sentences_is_an_error(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("!!! ???\n", encoding="utf-8")
    assert main(["ingest", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o")]) == 2
    _error_line(capsys, "no sentences in 1 document(s)", "document 'a'")
