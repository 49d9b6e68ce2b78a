"""End to end through the CLI on a tiny random encoder: build -> train -> knowledge update -> eval."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from kvi_engine.cli.main import main
from kvi_engine.kpr.make_dataset import generate, write
from kvi_engine.kpr.table import EntityTable
from kvi_engine.testing.kpr import tiny_base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write(root / "data", generate(3, n_people=24, n_orgs=6, n_places=5))
    return root, tiny_base(root / "base")


def test_build_train_update_eval(setup, capsys):
    root, base = setup
    d = root / "data"
    m0, m1, m2 = root / "m0", root / "m1", root / "m2"
    assert main(["kpr", "build", "--base", str(base), "--entities", str(d / "entities_train.jsonl"),
                 "--contexts", str(d / "contexts.jsonl"), "--out", str(m0)]) == 0
    assert main(["kpr", "train", "--model", str(m0), "--train", str(d / "train.jsonl"), "--corpus",
                 str(d / "corpus.jsonl"), "--out", str(m1), "--epochs", "6", "--batch-size", "8", "--lr", "3e-3",
                 "--save-every", "5"]) == 0
    log = [json.loads(x) for x in (m1 / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 * (len([1 for _ in open(d / "train.jsonl")]) // 8)
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first, (first, last)
    assert (m1 / "checkpoint-5" / "model.safetensors").is_file()
    w0, w1 = load_file(m0 / "model.safetensors"), load_file(m1 / "model.safetensors")
    assert all(np.array_equal(w0[k], w1[k]) for k in w0 if k.startswith("encoder."))  # encoder frozen
    assert not np.array_equal(w0["fusion.o_proj.weight"], w1["fusion.o_proj.weight"])

    # knowledge update: all entities, fusion weights kept, known rows copied bit for bit
    assert main(["kpr", "build", "--model", str(m1), "--entities", str(d / "entities.jsonl"),
                 "--contexts", str(d / "contexts.jsonl"), "--out", str(m2)]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    old, new = EntityTable.open(m1), EntityTable.open(m2)
    assert stats["reused"] == len(old) and stats["computed"] == len(new) - len(old)
    for name, i in old.index.items():
        np.testing.assert_array_equal(new.vectors[new.index[name]], old.vectors[i])
    w2 = load_file(m2 / "model.safetensors")
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert main(["kpr", "build", "--model", str(m1), "--entities", str(d / "entities.jsonl"), "--out", str(m1)]) == 2
    assert "kvi kpr: error: --out must differ from --model" in capsys.readouterr().err

    assert main(["kpr", "eval", "--model", str(m2), "--base", str(base), "--corpus", str(d / "corpus.jsonl"),
                 "--queries", str(d / "test.jsonl"), "--out", str(root / "report")]) == 0
    report = json.loads((root / "report.json").read_text())
    assert set(report["results"]) == {"base", "kpr"}
    assert set(report["results"]["kpr"]) == {"all", "alias", "name"}
    r = report["results"]["kpr"]["all"]
    assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@20"] <= 1
    assert (root / "report.png").stat().st_size > 1000


def test_training_the_encoder_too(setup, tmp_path):
    import torch

    from kvi_engine.kpr.model import KPRModel
    from kvi_engine.kpr.tokenizer import KPRTokenizer
    from kvi_engine.kpr.train import TrainConfig, train

    root, base = setup
    d = root / "data"
    m0 = tmp_path / "m0"
    assert main(["kpr", "build", "--base", str(base), "--entities", str(d / "entities_train.jsonl"),
                 "--out", str(m0)]) == 0  # no contexts: every vector from the anchor statement
    model, tok = KPRModel.from_pretrained(str(m0)), KPRTokenizer.from_pretrained(str(m0))
    before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    log = train(model, tok, d / "train.jsonl", d / "corpus.jsonl", tmp_path / "m1",
                TrainConfig(batch_size=4, max_steps=2, train_encoder=True))
    assert len(log) == 2 and (tmp_path / "m1" / "train_config.json").is_file()
    assert not torch.equal(before, model.encoder.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
