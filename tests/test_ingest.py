"""Ingestion: sentence ids, document formats, the checksummed sentence store, entity normalisation, rule extraction."""
import json

import pytest

from kvi_engine.capsules.capsule import Entity, load_capsules, load_entities
from kvi_engine.ingest import (
    AliasTable,
    DocumentFormatError,
    RuleExtractor,
    Sentence,
    SentenceStore,
    SentenceStoreError,
    document_sentences,
    load_documents,
    merge_entities,
    normalize,
    sentence_store_from_documents,
    split_sentences,
)
from kvi_engine.utils.paths import sample_dir


def test_split_sentences_english_and_cjk():
    assert split_sentences('Velotrex costs 3.5 units. It was approved in 2019! "Really?" Yes.') == [
        "Velotrex costs 3.5 units.", "It was approved in 2019!", '"Really?"', "Yes."]
    assert split_sentences("格伦病毒引起格伦热。格伦热由维洛特克斯治疗！真的吗？是的") == [
        "格伦病毒引起格伦热。", "格伦热由维洛特克斯治疗！", "真的吗？", "是的"]


def test_documents_from_txt_md_jsonl_have_stable_ids(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nThe **Grellan virus** causes fever.\n- It spreads by ticks.\n")
    (tmp_path / "b.txt").write_text("One fact. Another fact.\n\nA third.")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "d1", "text": "X leads Y. Z."}) + "\n")
    docs = load_documents(tmp_path)
    store = sentence_store_from_documents(docs)
    assert [(s.id, s.text) for s in store] == [
        ("a:s1", "The Grellan virus causes fever."), ("a:s2", "It spreads by ticks."),
        ("b:s1", "One fact."), ("b:s2", "Another fact."), ("b:s3", "A third."),
        ("d1:s1", "X leads Y."), ("d1:s2", "Z.")]
    again = sentence_store_from_documents(load_documents(tmp_path))
    assert [s.id for s in again] == [s.id for s in store]


@pytest.mark.parametrize("line, message", [
    ('{"id": "d1", "txt": "x"}', "unknown field"),
    ('{"id": "d1", "text": "   "}', "'text' must be a non-empty string"),
    ('{"id": "d:1", "text": "x"}', "must not contain ':'"),
    ('{"id": "d1", "text": "x"', "invalid JSON"),
])
def test_bad_jsonl_documents_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"id": "ok", "text": "fine."}\n' + line + "\n")
    with pytest.raises(DocumentFormatError, match=rf"docs.jsonl:2: .*{message}"):
        load_documents(p)


def test_duplicate_ids_and_bad_paths(tmp_path):
    (tmp_path / "x.txt").write_text("A.")
    (tmp_path / "d.jsonl").write_text('{"id": "x", "text": "B."}\n')
    with pytest.raises(DocumentFormatError, match="'x' occurs twice"):
        load_documents(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_documents(tmp_path / "missing")
    (tmp_path / "y.docx").write_text("")
    with pytest.raises(DocumentFormatError, match="unsupported document type"):
        load_documents(tmp_path / "y.docx")


def minimal_pdf(pages: list[str], title: str = "") -> bytes:
    """A valid PDF (Helvetica text, one line a page) written by hand, so tests need no PDF writer."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))),
                                                            len(pages)),
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append(f"<< /Title ({title}) >>")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)


def test_pdf_documents_page_text_title_and_errors(tmp_path):
    pytest.importorskip("pypdf")
    (tmp_path / "report.pdf").write_bytes(minimal_pdf(["Velotrex treats Grellan fever.", "It was approved in 2019."],
                                                      title="Annual report"))
    (doc,) = load_documents(tmp_path / "report.pdf")
    assert (doc.id, doc.title) == ("report", "Annual report")
    assert [s.text for s in doc.sentences()] == ["Velotrex treats Grellan fever.", "It was approved in 2019."]
    assert [d.id for d in load_documents(tmp_path)] == ["report"]  # directories pick PDFs up too
    (tmp_path / "scan.pdf").write_bytes(minimal_pdf([""]))
    with pytest.raises(DocumentFormatError, match=r"scan.pdf: no extractable text in 1 page\(s\)"):
        load_documents(tmp_path / "scan.pdf")
    (tmp_path / "broken.pdf").write_bytes(minimal_pdf(["x"])[:40])
    with pytest.raises(DocumentFormatError, match="broken.pdf: not a readable PDF"):
        load_documents(tmp_path / "broken.pdf")


def test_pdf_encrypted_with_an_owner_password_only_opens(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    (tmp_path / "plain.pdf").write_bytes(minimal_pdf(["Velotrex treats Grellan fever."]))
    for name, user in (("owner_only", ""), ("locked", "secret")):
        writer = pypdf.PdfWriter(clone_from=tmp_path / "plain.pdf")
        writer.encrypt(user_password=user, owner_password="owner", algorithm="RC4-128")
        writer.write(tmp_path / f"{name}.pdf")
    (doc,) = load_documents(tmp_path / "owner_only.pdf")
    assert [s.text for s in doc.sentences()] == ["Velotrex treats Grellan fever."]
    with pytest.raises(DocumentFormatError, match="locked.pdf: encrypted PDF"):
        load_documents(tmp_path / "locked.pdf")


def test_sentence_store_round_trip_and_corruption(tmp_path):
    store = SentenceStore(document_sentences("doc1", "Alpha leads Beta. 格伦病毒引起格伦热。"))
    path = tmp_path / "sentences.jsonl"
    store.save(path)
    loaded = SentenceStore.load(path)
    assert [(s.id, s.text) for s in loaded] == [(s.id, s.text) for s in store]
    assert loaded.get("doc1:s2").text == "格伦病毒引起格伦热。"
    with pytest.raises(KeyError, match="doc1:s9"):
        loaded.get("doc1:s9")

    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SentenceStoreError, match="corrupt"):
        SentenceStore.load(path)
    path.write_bytes(b"garbage\n")
    with pytest.raises(SentenceStoreError, match="not a sentence store"):
        SentenceStore.load(path)
    with pytest.raises(SentenceStoreError, match="duplicate sentence id"):
        SentenceStore([Sentence("d:s1", "d", "a"), Sentence("d:s1", "d", "b")])


def test_normalize_and_alias_table():
    assert normalize("  The Grellan   virus,") == "grellan virus" == normalize("grellan virus")
    assert normalize("「格伦病毒」。") == "格伦病毒"
    table = AliasTable([Entity("Grellan virus", aliases=("GLV",)), Entity("copper tick"),
                        Entity("Alpha", aliases=("AX",)), Entity("Beta", aliases=("ax",))])
    assert table.resolve("the GLV") == "Grellan virus"
    assert table.resolve("Copper ticks") == "copper tick"
    assert table.resolve("AX") is None and table.is_ambiguous("AX")
    assert table.resolve("Gamma") is None


def test_merge_entities_folds_aliases_and_bridges_groups():
    merged, rename = merge_entities([
        Entity("Grellan virus", "virus", ("GLV",)), Entity("Velotrex", "drug"),
        Entity("the grellan virus", "", ("Grellan",), "tick-borne"), Entity("GLV-1", "", ("grellan",))])
    assert [e.name for e in merged] == ["Grellan virus", "Velotrex"]
    assert merged[0].aliases == ("GLV", "Grellan", "GLV-1")
    assert merged[0].type == "virus" and merged[0].description == "tick-borne"
    assert rename == {"Grellan virus": "Grellan virus", "the grellan virus": "Grellan virus",
                      "GLV-1": "Grellan virus", "Velotrex": "Velotrex"}
    merged, rename = merge_entities([Entity("A", aliases=("x",)), Entity("B", aliases=("y",)),
                                     Entity("C", aliases=("x", "y"))])
    assert [e.name for e in merged] == ["A"] and set(rename.values()) == {"A"}


def test_rule_extractor_reproduces_the_sample_capsules():
    d = sample_dir()
    store = sentence_store_from_documents(load_documents(d / "docs.jsonl"))
    got = RuleExtractor(load_entities(d / "entities.jsonl")).extract(store)
    want = load_capsules(d / "capsules.jsonl")
    assert [(c.triple, c.sentence_id, c.sentence) for c in got] == [(c.triple, c.sentence_id, c.sentence) for c in want]


def test_rule_extractor_active_voice_literals_and_open_mode():
    ents = [Entity("Tobias Renk"), Entity("Aldermere Institute"), Entity("Lurov")]
    s = [Sentence("d:s1", "d", "In 1987 Tobias Renk founded the Aldermere Institute in Lurov."),
         Sentence("d:s2", "d", "The Aldermere Institute was founded in 1987."),
         Sentence("d:s3", "d", "The Aldermere Institute is headquartered in a valley near Lurov.")]
    got = RuleExtractor(ents).extract(s)
    assert [(c.triple, c.sentence_id) for c in got] == [
        (("Aldermere Institute", "founded_by", "Tobias Renk"), "d:s1"),
        (("Aldermere Institute", "founded_in", "1987"), "d:s2")]
    open_ = RuleExtractor(ents, require_known_entities=False).extract(s[2:])
    assert [c.triple for c in open_] == [("Aldermere Institute", "headquartered_in", "valley near Lurov")]


def test_build_and_save_assets_round_trip(tmp_path):
    from kvi_engine.ingest import build_assets, save_assets

    d = sample_dir()
    assets = build_assets(load_documents(d / "docs.jsonl"), load_entities(d / "entities.jsonl"))
    paths = save_assets(assets, tmp_path / "assets")
    saved, shipped = load_capsules(paths["capsules"]), load_capsules(d / "capsules.jsonl")
    assert [c.triple for c in saved] == [c.triple for c in shipped]
    assert len(SentenceStore.load(paths["sentences"])) == len(assets.store)
    assert {e.name for e in load_entities(paths["entities"])} == {e.name for e in load_entities(d / "entities.jsonl")}


def test_assets_come_from_documents_only_never_from_a_qa_set(tmp_path):
    """A QA file is not a document source, and a (deliberately false) gold answer never becomes a capsule."""
    from kvi_engine.ingest import build_assets

    d = sample_dir()
    with pytest.raises(DocumentFormatError, match=r"questions.jsonl:1: unknown field"):
        load_documents(d / "questions.jsonl")
    (tmp_path / "docs.jsonl").write_text((d / "docs.jsonl").read_text())
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "x", "question": "Who founded Quillon Biotech?", "answers": ["Mira Castellane"]}))
    with pytest.raises(DocumentFormatError, match=r"qa.jsonl:1: unknown field"):
        load_documents(tmp_path)  # a QA file dropped into the corpus directory is refused, not ingested
    assets = build_assets(load_documents(tmp_path / "docs.jsonl"), load_entities(d / "entities.jsonl"))
    triples = {c.triple for c in assets.capsules}
    assert ("Quillon Biotech", "founded_by", "Mira Castellane") not in triples
    assert all(c.sentence_id.split(":")[0].startswith("doc") for c in assets.capsules)
    assert not any("?" in s.text for s in assets.store)
