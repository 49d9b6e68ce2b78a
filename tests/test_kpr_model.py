"""KPR model + tokenizer on a tiny random BERT with the real linker: entity features, no-op path, save/load,
AutoModel/AutoTokenizer with remote code, Sentence Transformers equality, and clear errors on bad input."""
import json
import shutil

import numpy as np
import pytest
import torch

from kvi_engine.capsules.capsule import Entity
from kvi_engine.kpr import EntityTable, EntityTableError, KPREncoder, KPRModel, KPRTokenizer
from kvi_engine.kpr.builder import build_knowledge
from kvi_engine.kpr.hub import save_kpr
from kvi_engine.kpr.table import LINKER_FILE, TABLE_FILE, VOCAB_FILE
from kvi_engine.testing.kpr import HashEncoder, tiny_base

ENTITIES = [Entity("Kesul Bomive", "person", ("the Ashen Lantern",)), Entity("Kanolmoor", "town"),
            Entity("Café Zürich", "restaurant"), Entity("Oriel Dask", "person", ("Dask",)),
            Entity("Ferro Dask", "person", ("Dask",))]
TEXTS = ["Where was the Ashen Lantern born?", "Kesul Bomive ate at Café Zürich in Kanolmoor.",
         "No entity is named here.", "Dask wrote it."]


@pytest.fixture(scope="module")
def kpr_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kpr")
    base = tiny_base(root / "base")
    out = root / "model"
    build_knowledge(out, ENTITIES, HashEncoder(dim=16), "hash", contexts=["Kesul Bomive lived in Kanolmoor."])
    torch.manual_seed(1)
    model = KPRModel.from_base(base, entity_dim=16, fusion_heads=2)
    with torch.no_grad():  # a trained-looking fusion layer: zero-initialised W_o would hide the entity path
        model.fusion.o_proj.weight.normal_(0, 0.5)
        model.fusion.noop.normal_(0, 1.0)
    tok = KPRTokenizer.from_pretrained(str(base), knowledge=False)
    tok.attach_knowledge(out)
    save_kpr(model, tok, out)
    return out


@pytest.fixture(scope="module")
def loaded(kpr_dir):
    return KPRModel.from_pretrained(str(kpr_dir)).eval(), KPRTokenizer.from_pretrained(str(kpr_dir))


def test_tokenizer_features(loaded, kpr_dir):
    model, tok = loaded
    b = tok(TEXTS, padding=True, return_tensors="pt")
    assert set(b) >= {"input_ids", "attention_mask", "entity_ids", "entity_position_ids", "entity_attention_mask",
                      "entity_embeds"}
    assert b["entity_ids"].tolist() == [[0, -1, -1], [0, 2, 1], [-1, -1, -1], [3, 4, -1]]  # "Dask": both candidates
    table = EntityTable.open(kpr_dir)
    np.testing.assert_array_equal(b["entity_embeds"][1].numpy(), table.vectors[[0, 2, 1]].astype(np.float32))
    assert (b["entity_embeds"][2] == 0).all()
    positions = b["entity_position_ids"][1, 1]
    tokens = tok.convert_ids_to_tokens(b["input_ids"][1][positions[positions >= 0]])
    assert tokens == ["cafe", "zurich"]
    assert (b["entity_position_ids"][3, 0] == b["entity_position_ids"][3, 1]).all()
    single = tok("Kanolmoor")
    assert single["entity_ids"] == [1] and isinstance(single["input_ids"], list)


def test_text_without_entities_goes_through_the_noop(loaded):
    model, tok = loaded
    b = tok(["No entity is named here."], return_tensors="pt")
    assert b["entity_ids"].shape == (1, 0)
    with torch.no_grad():
        out = model(**b)
        noop_only = model.fuse(out.pooled)
        e = model.encode(**b)
    assert torch.isfinite(e).all() and torch.allclose(e.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(e, noop_only)
    # the no-op is really attended: a different no-op vector changes the embedding
    with torch.no_grad():
        saved = model.fusion.noop.clone()
        model.fusion.noop.add_(1.0)
        changed = model.encode(**b)
        model.fusion.noop.copy_(saved)
    assert (changed - e).abs().max() > 1e-3


def test_entity_vectors_change_the_embedding(loaded):
    model, tok = loaded
    b = tok(["Kesul Bomive ate at Café Zürich in Kanolmoor."], return_tensors="pt")
    with torch.no_grad():
        e1 = model.encode(**b)
        b["entity_embeds"] = b["entity_embeds"] + 1.0
        e2 = model.encode(**b)
    assert (e1 - e2).abs().max() > 1e-3


def test_untrained_fusion_keeps_the_pooled_vector(tmp_path):
    base = tiny_base(tmp_path / "base")
    model = KPRModel.from_base(base, entity_dim=16)
    pooled = torch.randn(3, 32)
    ent = torch.randn(3, 2, 16)
    with torch.no_grad():
        out = model.fuse(pooled, ent, torch.zeros(3, 2, 1, dtype=torch.long), torch.ones(3, 2, dtype=torch.long))
    ref = torch.nn.functional.normalize(torch.nn.functional.layer_norm(pooled, (32,), eps=1e-12), dim=-1)
    torch.testing.assert_close(out, ref)


def test_save_load_automodel_and_sentence_transformers_agree(loaded, kpr_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    model, tok = loaded
    with torch.no_grad():
        ref = model.encode(**tok(TEXTS, padding=True, return_tensors="pt")).numpy()
    am = AutoModel.from_pretrained(str(kpr_dir), trust_remote_code=True).eval()
    at = AutoTokenizer.from_pretrained(str(kpr_dir), trust_remote_code=True)
    assert type(am).__name__ == "KPRModel" and type(at).__name__ == "KPRTokenizer"
    with torch.no_grad():
        np.testing.assert_allclose(am.encode(**at(TEXTS, padding=True, return_tensors="pt")).numpy(), ref, atol=1e-6)
    st = SentenceTransformer(str(kpr_dir), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), ref, atol=1e-6)
    enc = KPREncoder(kpr_dir)
    q = enc.encode_queries(TEXTS)
    assert q.dtype == np.float32 and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(q, ref, atol=1e-6)
    # round trip through save_pretrained into a fresh directory (knowledge files follow the tokenizer)
    save_kpr(am, at, tmp_path / "copy")
    st2 = SentenceTransformer(str(tmp_path / "copy"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st2.encode(TEXTS, convert_to_numpy=True), ref, atol=1e-6)


def test_bad_input_errors(loaded, kpr_dir, tmp_path):
    model, tok = loaded
    with pytest.raises(ValueError, match="text 1 is empty"):
        tok(["fine", "   "])
    with pytest.raises(ValueError, match="single raw texts"):
        tok("a", "b")
    b = tok(["Kanolmoor"], return_tensors="pt")
    b["entity_embeds"] = b["entity_embeds"][..., :8]
    with pytest.raises(ValueError, match="entity_embeds have dim 8, the model expects 16"):
        model(**b)

    broken = tmp_path / "no_linker"
    shutil.copytree(kpr_dir, broken)
    (broken / LINKER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="entity_linker.bin: entity linker missing"):
        KPRTokenizer.from_pretrained(str(broken))

    mismatch = tmp_path / "mismatch"
    shutil.copytree(kpr_dir, mismatch)
    np.save(mismatch / TABLE_FILE, np.zeros((3, 16), np.float16))
    with pytest.raises(EntityTableError, match="does not match the vocabulary"):
        KPRTokenizer.from_pretrained(str(mismatch))

    wrong_dim = tmp_path / "wrong_dim"
    shutil.copytree(kpr_dir, wrong_dim)
    cfg = json.loads((wrong_dim / "config.json").read_text())
    cfg["entity_dim"] = 24
    (wrong_dim / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EntityTableError, match="entity_dim=24"):
        KPRTokenizer.from_pretrained(str(wrong_dim))
    assert (kpr_dir / VOCAB_FILE).is_file()


def test_kpr_encoder_is_a_drop_in_dense_retriever(kpr_dir):
    """Integration point: the RAG/KV-Prefix dense index takes any encode_queries/encode_passages object."""
    from kvi_engine.retrieval.dense import DenseIndex

    enc = KPREncoder(kpr_dir)
    passages = ["Kesul Bomive was born in Kanolmoor.", "Café Zürich serves soup.", "Oriel Dask paints.",
                "A sentence about nothing in particular."]
    index = DenseIndex([f"p{i}" for i in range(4)], passages, enc, exact=True)
    hits = index.search(["Where was the Ashen Lantern born?", "Who is Dask?"], k=4)
    expected = np.argsort(-(enc.encode_queries(["Where was the Ashen Lantern born?", "Who is Dask?"])
                            @ enc.encode_passages(passages).T), axis=1, kind="stable")
    assert [[h.id for h in row] for row in hits] == [[f"p{j}" for j in row] for row in expected]


def test_kpr_encoder_as_the_drm_embedding_scorer(kpr_dir):
    from kvi_engine.capsules.capsule import Capsule
    from kvi_engine.retrieval.drm import DRMConfig, DRMScorer

    enc = KPREncoder(kpr_dir)
    caps = [Capsule("Kesul Bomive", "born_in", "Kanolmoor"), Capsule("Oriel Dask", "works_for", "Café Zürich")]
    (scored,) = DRMScorer(enc, DRMConfig(alpha=0.0, relation_bonus=0.0)).score(["Where was the Ashen Lantern born?"],
                                                                            [caps])
    sims = enc.encode_passages([DRMScorer(enc).statement(c) for c in caps]) @ enc.encode_queries(
        ["Where was the Ashen Lantern born?"])[0]
    assert sorted(s.embedding for s in scored) == pytest.approx(sorted(np.clip(sims, 0, 1).tolist()), abs=1e-6)
