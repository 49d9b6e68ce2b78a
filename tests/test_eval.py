"""Evaluation: dataset validation with file:line errors, metrics against hand-computed values, bootstrap and
permutation statistics against exact small cases, and the report files."""
import csv
import io
import json

import pytest

from kvi_engine.eval import (
    DatasetFormatError,
    QAItem,
    bootstrap_ci,
    canonicalize,
    evaluate,
    exact_match,
    load_dataset,
    paired_permutation_test,
    relaxed_match,
    to_markdown,
    token_f1,
    write_report,
)
from kvi_engine.utils.paths import sample_dir


def write(tmp_path, *lines):
    p = tmp_path / "qa.jsonl"
    p.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                         for line in lines))
    return p


GOOD = {"id": "q1", "question": "Who founded Quillon Biotech?", "answers": ["Ines Marrow"]}


def test_sample_questions_load():
    items = load_dataset(sample_dir() / "questions.jsonl")
    assert len(items) == 32 and {it.hops for it in items} == {1, 2}
    assert items[0] == QAItem("q01", "Who founded Quillon Biotech?", ("Ines Marrow",), 1,
                              (("Quillon Biotech", "founded_by", "Ines Marrow"),))


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "id": "q2", "answer": ["x"]}, r"unknown field\(s\) \['answer'\]"),
    ({**GOOD, "id": "q2", "question": "   "}, "question 'q2' is empty"),
    ({"id": "q2", "answers": ["x"]}, "question 'q2' is empty"),
    ({**GOOD, "id": "q2", "answers": []}, "'answers' must be a non-empty list"),
    ({**GOOD, "id": "q2", "answers": "Ines Marrow"}, "'answers' must be a non-empty list"),
    ({**GOOD, "id": "q2", "hops": 0}, "'hops' must be a positive integer"),
    ({**GOOD, "id": "q2", "support": [["a", "b"]]}, "'support' must be a list"),
    ({**GOOD}, "id 'q1' already used on line 1"),
    ('{"id": "q2", "question": "x"', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    with pytest.raises(DatasetFormatError, match=rf"qa.jsonl:2: .*{message}"):
        load_dataset(write(tmp_path, GOOD, bad))


def test_integer_ids_blank_lines_and_empty_files(tmp_path):
    items = load_dataset(write(tmp_path, {**GOOD, "id": 7}, "", {**GOOD, "id": "8"}))
    assert [it.id for it in items] == ["7", "8"]
    with pytest.raises(DatasetFormatError, match="dataset is empty"):
        load_dataset(write(tmp_path, ""))
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.jsonl")


def test_metrics():
    assert canonicalize("  The ＡLDERMERE   Institute!! ") == "aldermere institute"
    assert exact_match("the Aldermere Institute.", ["Aldermere Institute"]) == 1.0
    assert exact_match("Aldermere", ["Aldermere Institute"]) == 0.0
    # pred tokens {it, was, ines, marrow}, gold {ines, marrow}: P = 2/4, R = 1 -> F1 = 2/3
    assert token_f1("It was Ines Marrow.", ["Tamsk", "Ines Marrow"]) == pytest.approx(2 / 3)
    assert token_f1("", ["Tamsk"]) == 0.0
    assert relaxed_match("It was founded by Ines Marrow in 2011.", ["Ines Marrow"]) == 1.0
    assert relaxed_match("Tamskville", ["Tamsk"]) == 0.0 and relaxed_match("", ["Tamsk"]) == 0.0
    # CJK: characters are tokens; relaxed match is a substring test
    assert token_f1("维洛特克斯治疗", ["维洛特克斯"]) == pytest.approx(2 * (5 / 7) * 1 / (5 / 7 + 1))
    assert relaxed_match("答案是维洛特克斯。", ["维洛特克斯"]) == 1.0
    assert exact_match("维洛特克斯。", ["维洛特克斯"]) == 1.0


def test_bootstrap_ci():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0, 1.0)
    values = [1] * 30 + [0] * 70
    mean, lo, hi = bootstrap_ci(values, n_resamples=4000)
    se = (0.3 * 0.7 / 100) ** 0.5  # normal approximation: 0.3 +- 1.96 se = [0.21, 0.39]
    assert mean == 0.3 and abs(lo - (0.3 - 1.96 * se)) < 0.02 and abs(hi - (0.3 + 1.96 * se)) < 0.02
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_permutation_test_exact_cases():
    assert paired_permutation_test([1, 1, 1, 1, 0], [0, 0, 0, 0, 0]) == pytest.approx(2 / 16)
    assert paired_permutation_test([1, 1, 0], [0, 0, 1]) == 1.0  # |sum| >= 1 under every sign flip
    assert paired_permutation_test([1, 0], [1, 0]) == 1.0
    assert paired_permutation_test([1] * 30, [0] * 30, n_resamples=999) == pytest.approx(1 / 1000)
    with pytest.raises(ValueError, match="equal-length"):
        paired_permutation_test([1, 0], [1])


def dataset():
    return load_dataset(sample_dir() / "questions.jsonl")[:8]


def test_evaluate_and_write_report(tmp_path):
    ds = dataset()
    gold = [it.answers[0] for it in ds]
    preds = {"LLM": ["no idea"] * 8, "RAG": gold[:4] + ["Tamsk"] * 4, "KVI": [f"It is {g}." for g in gold]}
    report = evaluate(ds, preds, reference="KVI", dataset_name="sample")
    by = {r.method: r for r in report.methods}
    assert by["RAG"].metrics["em"]["mean"] == 0.5 and by["KVI"].metrics["relaxed"]["mean"] == 1.0
    assert by["KVI"].metrics["em"]["p_vs_reference"] is None
    assert by["LLM"].metrics["relaxed"]["p_vs_reference"] == pytest.approx(2 / 256)
    assert len({r.inputs_sha256 for r in report.methods}) == 1
    paths = write_report(report, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| KVI |" in md and "| RAG |" in md and "1-hop" in md
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 9 and {r["metric"] for r in rows} == {"em", "f1", "relaxed"}
    data = json.loads(paths["json"].read_text())
    assert data["version"] == 2 and data["reference"] == "KVI" and len(data["items"]) == 8
    assert set(data["methods"]) == {"KVI", "RAG", "LLM"} and data["methods"]["RAG"]["n"] == 8
    assert data["items"][0]["KVI"]["prediction"] == f"It is {gold[0]}."
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_rejects_inconsistent_runs():
    ds = dataset()
    with pytest.raises(ValueError, match="'RAG' has 7 predictions for 8"):
        evaluate(ds, {"KVI": ["x"] * 8, "RAG": ["x"] * 7})
    with pytest.raises(ValueError, match="reference method 'KVI' not among"):
        evaluate(ds, {"RAG": ["x"] * 8}, reference="KVI")
    qs = [it.question for it in ds]
    with pytest.raises(ValueError, match="different inputs"):
        evaluate(ds, {"KVI": ["x"] * 8, "RAG": ["x"] * 8}, inputs={"KVI": qs, "RAG": qs[::-1]})
    assert "| RAG |" in to_markdown(evaluate(ds, {"RAG": ["x"] * 8}))


def test_support_metrics_by_hand():
    from kvi_engine.capsules.capsule import Capsule
    from kvi_engine.eval.dataset import QAItem
    from kvi_engine.eval.support import SupportGold, support_report
    from kvi_engine.ingest.sentences import Sentence
    from kvi_engine.ingest.store import SentenceStore

    store = SentenceStore([Sentence("a:s1", "a", "Ann Lee (born 1901) was a painter."),   # 27 characters squeezed
                           Sentence("a:s2", "a", "She lived in Oslo."),
                           Sentence("b:s1", "b", "Oslo is a city."), Sentence("c:s1", "c", "Tamsk is a town.")])
    caps = [Capsule("Oslo", "is_a", "city", "b:s1", "Oslo is a city.")]
    items = [QAItem("q1", "?", ("x",), supporting=(("a", "was a painter. She lived"), ("b", None)), type="bridge"),
             QAItem("q2", "?", ("x",), supporting=(("c", None),), type="single"),
             QAItem("q3", "?", ("x",), support=(("Oslo", "is_a", "city"),)),
             QAItem("q4", "?", ("x",))]                                      # no gold: not scored
    gold = SupportGold(store, caps)
    u = gold.units(items[0])
    # the gold span crosses our boundary: 12 of its 20 characters lie in a:s1, 8 in a:s2
    assert gold.score(u, ["a:s1"])["support_recall"] == 0.5        # 12/20 >= half, b missing
    assert gold.score(u, ["a:s2", "b:s1"]) == {"support_recall": 0.5, "support_all": 0.0, "doc_recall": 1.0}
    assert gold.score(u, ["a:s1", "b:s1"]) == {"support_recall": 1.0, "support_all": 1.0, "doc_recall": 1.0}
    rep = support_report(items, {"M": [["a:s1"], ["c:s1"], ["b:s1"], []]}, store, caps)
    m = rep["methods"]["M"]
    assert rep["questions"] == 3 and m["n"] == 3
    assert m["support_recall"] == pytest.approx((0.5 + 1 + 1) / 3) and m["support_all"] == pytest.approx(2 / 3)
    assert m["doc_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["by_type"]["bridge"]["support_all"] == 0.0 and m["by_type"]["single"]["n"] == 1
    with pytest.raises(ValueError, match="'q9'.*'zz'"):
        gold.units(QAItem("q9", "?", ("x",), supporting=(("zz", None),)))
    with pytest.raises(ValueError, match="not found in document 'a'"):
        gold.units(QAItem("q9", "?", ("x",), supporting=(("a", "No such words"),)))


def test_dataset_accepts_the_shared_sets_fields(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"id": "m1", "question": "Q?", "answers": ["a"], "type": "3hop1",
                             "supporting": [{"doc_id": "d1", "sentence": None}], "context_doc_ids": ["d1", "d2"],
                             "hops": [{"question": "q", "answer": "a", "doc_id": "d1"}] * 3}) + "\n" +
                 json.dumps({"id": "p1", "question": "Q2?", "answers": ["yes"], "pmid": "1", "year": "2001",
                             "long_answer": "L", "type": "yes_no_maybe",
                             "supporting": [{"doc_id": "d2", "sentence": "S."}]}) + "\n")
    a, b = load_dataset(p)
    assert a.hops == 3 and a.group == "3hop1" and a.supporting == (("d1", None),) and len(a.extra["hops"]) == 3
    assert b.extra == {"pmid": "1", "year": "2001", "long_answer": "L"} and b.supporting == (("d2", "S."),)
    p.write_text(json.dumps({"id": "x", "question": "Q?", "answers": ["a"], "supporting": [{"doc": "d1"}]}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"q.jsonl:1: 'supporting'\[0\]"):
        load_dataset(p)
