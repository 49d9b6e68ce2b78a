"""The kvi CLI end to end on tiny models; user errors print one line and exit 2."""
import json

import pytest
import torch

from kvi_engine import compile_bank, save_capsules, save_entities
from kvi_engine.cli import main as cli
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer


@pytest.fixture()
def tiny_local_model(tmp_path):
    """A tiny model saved as a local HF directory, loaded by path like a real one."""
    d = tmp_path / "model"
    model("qwen2", True).save_pretrained(d)
    tokenizer(True).save_pretrained(d)
    return str(d)


def test_compile_inspect_ask(tmp_path, tiny_local_model, capsys):
    save_capsules(CAPSULES, tmp_path / "c.jsonl")
    save_entities(ENTITIES, tmp_path / "e.jsonl")
    bank = tmp_path / "bank"
    assert cli.main(["compile", "--capsules", str(tmp_path / "c.jsonl"), "--entities", str(tmp_path / "e.jsonl"),
                     "--model", tiny_local_model, "--out", str(bank), "--quant", "fp32"]) == 0
    assert "compiled 7 capsules (5 triples, 2 anchors)" in capsys.readouterr().out
    assert cli.main(["inspect", str(bank), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_capsules"] == 7 and info["storage"] == "fp32" and info["prefix_token_ids"]
    assert info["bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers * (k, v) * kv_heads * head_dim * fp32
    assert cli.main(["inspect", str(bank), "--capsules", "2"]) == 0
    assert "[1] SFTSV is transmitted by" in capsys.readouterr().out
    assert cli.main(["ask", "--bank", str(bank), "--model", tiny_local_model, "-q", "What does SFTSV cause?",
                     "-q", "Where is Oslo?", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("KVI:") == 2 and out.count("LLM:") == 2 and "SFTSV causes fever." in out
    assert cli.main(["ask", "--bank", str(bank), "--model", tiny_local_model, "-q", "Hi?", "--capsules", "0,2",
                     "--no-compare", "--max-new-tokens", "2"]) == 0
    assert "capsules: [0, 2]" in capsys.readouterr().out


def test_user_errors_are_one_clear_line(tmp_path, tiny_local_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "A", "relation": "r", "object": "B"}\n{"subject": "A"\n')
    assert cli.main(["compile", "--capsules", str(bad), "--model", tiny_local_model, "--out", str(tmp_path / "b")]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such bank" in capsys.readouterr().err
    other = compile_bank(model("qwen2", True, seed=3), tokenizer(True), CAPSULES, tmp_path / "other", quant="fp32",
                         progress=False)
    assert cli.main(["ask", "--bank", str(other.path.parent), "--model", tiny_local_model, "-q", "x?"]) == 2
    assert "different weights" in capsys.readouterr().err
    good = compile_bank(model("qwen2", True), tokenizer(True), CAPSULES, tmp_path / "good", quant="fp32",
                        progress=False)
    assert cli.main(["ask", "--bank", str(good.path.parent), "--model", tiny_local_model, "-q", "x?",
                     "--capsules", "0,99"]) == 2
    assert "capsule id 99 out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["ask", "--bank", str(good.path.parent), "-q", "x?", "--capsules", ","])
    assert "empty capsule id list" in capsys.readouterr().err


def test_default_model_falls_back_loudly_but_a_named_model_never_does(capsys, monkeypatch, tmp_path):
    from kvi_engine.models.loading import load_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m, tok, fallback = load_model(None)  # the default model cannot be downloaded here
    assert fallback and m.config.model_type == "llama"  # the bundled reader (kvi_engine/reader/model)
    assert "FALLING BACK TO THE BUNDLED READER" in capsys.readouterr().err
    ids = torch.tensor([tok("hello").input_ids])
    assert m(input_ids=ids).logits.shape[-1] == m.config.vocab_size
    with pytest.raises(OSError):
        load_model("no-such-org/no-such-model")
    assert "FALLING BACK" not in capsys.readouterr().err
    save_capsules(CAPSULES, tmp_path / "c.jsonl")
    assert cli.main(["compile", "--capsules", str(tmp_path / "c.jsonl"), "--model", "no-such-org/no-such-model",
                     "--out", str(tmp_path / "b")]) == 2
    assert cli.main(["inspect", str(tmp_path / "b")]) == 2  # nothing was written


def test_demo_runs_the_pipeline_retrieval(tmp_path, capsys):
    """The main job on the tiny fallback model: capsules come from the query pipeline's retrieval, so each sample
    question's first injected capsule is its supporting fact."""
    assert cli.main(["demo", "--out", str(tmp_path / "bank"), "--questions", "3", "--max-new-tokens", "2",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "injected: " in out and "ratio_paired" in out
    assert "first Grellan virus causes Grellan fever." in out  # q01: what disease does the Grellan virus cause?
