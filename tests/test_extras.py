"""Every command that needs a missing extra says in one line which extra to install (exit 2); plots degrade to a
one-line warning with every other output written. An extra is made missing by hiding its module."""
import sys

import pytest

from kvi_engine.cli.main import main
from kvi_engine.utils import extras
from kvi_engine.utils.paths import sample_dir


def hide(monkeypatch, *modules):
    for m in modules:
        for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)  # `import m` now raises ImportError(name=m)


def one_error_line(capsys, needle):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "it/s]" not in ln]
    assert len(err) == 1 and needle in err[0], err
    return err[0]


def test_require_names_the_extra_and_lets_real_errors_through(monkeypatch):
    hide(monkeypatch, "pypdf")
    with pytest.raises(extras.MissingExtra, match=r"reading x.pdf needs pypdf: pip install 'kvi-engine\[pdf\]'"):
        extras.require("pypdf", "pdf", "reading x.pdf")
    assert extras.require("json", "none", "x").dumps({}) == "{}"
    assert extras.installed("numpy") and not extras.installed("no-such-distribution-kvi")


def test_pdf_documents_without_pypdf(monkeypatch, tmp_path, capsys):
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    hide(monkeypatch, "pypdf")
    assert main(["eval", str(sample_dir() / "questions.jsonl"), "--docs", str(tmp_path / "paper.pdf"),
                 "--entities", str(sample_dir() / "entities.jsonl"), "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "pip install 'kvi-engine[pdf]'")


@pytest.mark.parametrize("bench, module", [("graph", "igraph"), ("graph", "networkx"), ("linker", "ahocorasick")])
def test_benchmark_baselines_without_the_bench_extra(monkeypatch, capsys, bench, module):
    hide(monkeypatch, module)
    assert main(["bench", bench, "--out", "/nonexistent/never-written"]) == 2
    one_error_line(capsys, f"kvi bench {bench} needs {module}: pip install 'kvi-engine[bench]'")


def test_ray_flags_without_ray(monkeypatch, tmp_path, capsys):
    from kvi_engine import distributed
    hide(monkeypatch, "ray")
    assert main(["compile", "--capsules", str(sample_dir() / "capsules.jsonl"), "--out", str(tmp_path / "b"),
                 "--ray"]) == 2
    one_error_line(capsys, "kvi compile --ray needs ray: pip install 'kvi-engine[ray]'")
    assert not (tmp_path / "b").exists()  # refused before any work
    monkeypatch.setattr(extras, "installed", lambda dist: dist != "ray")
    with pytest.raises(extras.MissingExtra, match=r"pip install 'kvi-engine\[ray\]'"):
        distributed.build_assets([], [], progress=False)


def test_triton_backend_without_triton(monkeypatch):
    from kvi_engine import dispatch
    from kvi_engine.attention import op as attention

    hide(monkeypatch, "triton")
    monkeypatch.setattr(extras, "installed", lambda dist: dist != "triton")
    with pytest.raises(dispatch.BackendUnavailable, match=r"pip install 'kvi-engine\[triton\]'"):
        attention.select("cpu", "triton")


def test_eval_without_matplotlib_writes_everything_but_the_png(monkeypatch, tmp_path, capsys):
    from kvi_engine.testing.helpers import model, tokenizer

    d = tmp_path / "model"
    model("qwen2", True).save_pretrained(d)
    tokenizer(True).save_pretrained(d)
    hide(monkeypatch, "matplotlib")
    out = tmp_path / "eval"
    assert main(["eval", str(sample_dir() / "questions.jsonl"), "--model", str(d), "--out", str(out),
                 "--methods", "llm,kvi", "--limit", "2", "--max-new-tokens", "1", "--resamples", "50"]) == 0
    assert all((out / f"report.{ext}").is_file() for ext in ("md", "csv", "json")) and not (out / "report.png").exists()
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "pip install 'kvi-engine[plot]'" in warnings[0], warnings


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "prometheus_client"])
def test_serve_without_the_serve_extra(monkeypatch, capsys, module):
    hide(monkeypatch, module)
    assert main(["serve", "--bank", "/nonexistent/never-read", "--model", "/nonexistent/model"]) == 2
    one_error_line(capsys, f"kvi serve needs {module}: pip install 'kvi-engine[serve]'")
    assert main(["bench", "serve", "--out", "/nonexistent/never-written"]) == 2
    one_error_line(capsys, f"kvi bench serve needs {module}: pip install 'kvi-engine[serve]'")
