"""Dynamic bank updates: add (new segment), remove (tombstone), re-compile an entity, compact, requantize; stable
ids, snapshots that survive later updates, and every state equal to compiling its capsules from scratch."""
import numpy as np
import pytest
import torch

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.compile.compiler import add_capsules, compile_bank, recompile_entity
from kvi_engine.formats.container import BankFormatError
from kvi_engine.generate.inject import inject
from kvi_engine.models.fingerprint import FingerprintMismatch
from kvi_engine.plan.plan import build_plan
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer
from kvi_engine.testing.synth_bank import create_tagged_bank, tagged_capsules, tagged_kv

NEW = [Capsule("Oslo", "capital_of", "Norway"), Capsule("Mira Vance", "born_in", "Oslo")]


def kv_of(bank, i, layer=1):
    start, n = bank.ranges[i].tolist()
    return bank.gather_kv(layer, torch.arange(start, start + n))


def assert_capsule_equal(a, i, b, j, atol=0.0):
    assert a.capsule(i) == b.capsule(j) and a.token_ids(i) == b.token_ids(j)
    for layer in range(a.num_layers):
        for x, y in zip(kv_of(a, i, layer), kv_of(b, j, layer)):
            torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("quant", ["fp16", "int4:g8"])
def test_add_remove_recompile_compact_keep_ids_and_content(tmp_path, quant):
    m, tok = model("qwen2", False), tokenizer(False)
    root = tmp_path / "bank"
    compile_bank(m, tok, CAPSULES, root, quant=quant, entities=ENTITIES, progress=False)
    v1 = KVBank.open(root)
    n0 = v1.num_capsules

    new_ids = add_capsules(root, m, tok, NEW)
    assert new_ids == [n0, n0 + 1]
    v2 = KVBank.open(root, verify=True)
    assert v2.num_capsules == n0 + 2 and len(v2.segments) == 2 and v1.num_capsules == n0  # old snapshot unchanged
    fresh = compile_bank(m, tok, NEW, tmp_path / "fresh", quant=quant, progress=False)
    for j, i in enumerate(new_ids):  # a new segment holds exactly what compiling the capsules alone gives
        assert_capsule_equal(v2, i, fresh, j)
    for i in range(n0):
        assert_capsule_equal(v2, i, v1, i)

    bank_updates.remove(root, [1, new_ids[0]])
    v3 = KVBank.open(root)
    assert v3.live_ids() == [i for i in range(n0 + 2) if i not in (1, new_ids[0])]
    with pytest.raises(KeyError, match="capsule 1 was removed"):
        v3.capsule(1)
    with pytest.raises(KeyError, match="removed"):
        build_plan(v3, [[0, 1]])
    with pytest.raises(KeyError, match="already removed"):
        bank_updates.remove(root, [1])
    v2.capsule(1)  # readers that opened earlier still see it

    edited = Capsule("SFTSV", "causes", "thrombocytopenia", sentence_id="d9:s1", sentence="SFTSV lowers platelets.")
    ids = recompile_entity(root, m, tok, "SFTSV", updates={0: edited})
    v4 = KVBank.open(root, verify=True)
    assert ids == [0, len(CAPSULES)]  # its triple (capsule 1 was removed) and its anchor, same ids
    assert v4.capsule(0) == edited and v4.capsule(len(CAPSULES)).kind == "anchor"
    alone = compile_bank(m, tok, [edited], tmp_path / "alone", quant=quant, progress=False)
    assert_capsule_equal(v4, 0, alone, 0)
    assert_capsule_equal(v4, len(CAPSULES), v1, len(CAPSULES))  # the anchor re-compiled to the same KV

    files_before = len(v4.snapshot.files)
    report = bank_updates.compact(root)
    v5 = KVBank.open(root, verify=True)
    assert len(v5.segments) == 1 and len(v5.snapshot.files) < files_before
    assert report["bytes_after"] < report["bytes_before"]
    assert v5.live_ids() == v4.live_ids() and v5.num_capsules == v4.num_capsules
    for i in v5.live_ids():
        assert_capsule_equal(v5, i, v4, i)  # bytes copied, not re-encoded: exact
    assert_capsule_equal(v4, 0, alone, 0)  # v4's files were deleted by compaction; its mapping still reads

    # Injection through the compacted bank equals injection through the pre-compaction snapshot.
    prompt = torch.tensor([tok("Which disease does SFTSV cause?", add_special_tokens=False).input_ids])
    rows = [[0, new_ids[1], len(CAPSULES)]]
    with torch.no_grad(), inject(m, v4, rows, backend="reference"):
        a = m(input_ids=prompt).logits
    with torch.no_grad(), inject(m, v5, rows, backend="reference"):
        b = m(input_ids=prompt).logits
    assert torch.equal(a, b)


def test_updates_refuse_what_they_cannot_do(tmp_path):
    m, tok = model("qwen2", False), tokenizer(False)
    root = tmp_path / "bank"
    compile_bank(m, tok, CAPSULES[:2], root, progress=False)
    with pytest.raises(FingerprintMismatch):
        add_capsules(root, model("llama", False), tok, NEW)
    with pytest.raises(IndexError, match="out of range"):
        bank_updates.remove(root, [7])
    with pytest.raises(ValueError, match="repeat"):
        bank_updates.remove(root, [0, 0])
    with pytest.raises(KeyError, match="no live capsule"):
        recompile_entity(root, m, tok, "Nobody")
    with pytest.raises(ValueError, match="not 'SFTSV'"):
        recompile_entity(root, m, tok, "SFTSV", updates={5: NEW[0]})
    bank_updates.remove(root, [0, 1])
    with pytest.raises(ValueError, match="every capsule was removed"):
        bank_updates.compact(root)
    with pytest.raises(ValueError, match="unknown bank storage"):
        bank_updates.requantize(root, "int3")
    assert KVBank.open(root).live_ids() == []
    assert not any(p.name.startswith(".") for p in root.iterdir())  # failed updates leave no temp files


def test_recompiling_over_an_updated_bank_starts_fresh(tmp_path):
    m, tok = model("qwen2", False), tokenizer(False)
    root = tmp_path / "bank"
    compile_bank(m, tok, CAPSULES[:2], root, progress=False)
    add_capsules(root, m, tok, NEW)
    bank = compile_bank(m, tok, CAPSULES[:3], root, progress=False)
    assert bank.num_capsules == 3 and len(bank.segments) == 1
    assert sorted(p.name for p in root.iterdir()) == ["LOCK", "bank.kvb"]


def test_recompiling_over_an_updated_bank_is_atomic_for_readers(tmp_path, monkeypatch):
    """A reader opening the bank at any moment of a fresh compile over an updated bank (manifest + segments,
    bank.kvb among them) sees the old bank or the new one, never an error or a mix."""
    import os
    m, tok = model("qwen2", False), tokenizer(False)
    root = tmp_path / "bank"
    compile_bank(m, tok, CAPSULES[:2], root, progress=False)
    add_capsules(root, m, tok, NEW)
    bank_updates.remove(root, [0])

    def state():
        b = KVBank.open(root)
        return [(i, b.capsule(i), b.token_ids(i)) for i in b.live_ids()]

    old = state()
    seen = []

    def observe(real):
        def call(*args, **kw):
            out = real(*args, **kw)
            if any(str(root) in str(a) for a in args):
                try:
                    seen.append(state())
                except Exception as e:  # noqa: BLE001 -- the failure is what the test reports
                    seen.append(e)
            return out
        return call

    for name in ("replace", "unlink", "link", "rename"):
        monkeypatch.setattr(os, name, observe(getattr(os, name)))
    compile_bank(m, tok, CAPSULES[:3], root, progress=False)
    monkeypatch.undo()
    new = state()
    assert len(seen) >= 3 and [i for i, *_ in new] == [0, 1, 2]
    for s in seen:
        assert s == old or s == new, s
    assert seen[-1] == new and sorted(p.name for p in root.iterdir()) == ["LOCK", "bank.kvb"]


def test_manifest_and_segment_mismatches_are_named(tmp_path):
    root = create_tagged_bank(tmp_path / "b", [0, 1, 2])
    meta, tids, k, v = tagged_capsules([5])
    bank_updates.add_kv(root, meta, tids, k, v)
    seg = next(p for p in root.iterdir() if p.name.startswith("seg-"))
    other = create_tagged_bank(tmp_path / "other", [9])
    seg.write_bytes((other / "bank.kvb").read_bytes())  # a foreign file under the manifest's name
    with pytest.raises(BankFormatError, match="not the .* the manifest names"):
        KVBank.open(root)
    seg.unlink()
    with pytest.raises(BankFormatError, match="segment file named by .* is missing"):
        KVBank.open(root)


@pytest.mark.parametrize("quant", ["fp32", "int8:channel"])
def test_tagged_updates_without_a_model(tmp_path, quant):
    root = create_tagged_bank(tmp_path / "b", [0, 1, 2, 3], quant)
    meta, tids, k, v = tagged_capsules([10, 11])
    assert bank_updates.add_kv(root, meta, tids, k, v) == [4, 5]
    meta, tids, k, v = tagged_capsules([20])
    bank_updates.replace_kv(root, [2], meta, tids, k, v)
    bank_updates.remove(root, [1])
    for step in ("updated", "compacted", "requantized"):
        if step == "compacted":
            bank_updates.compact(root)
        if step == "requantized":
            bank_updates.requantize(root, "fp16")
        bank = KVBank.open(root, verify=True)
        assert bank.live_ids() == [0, 2, 3, 4, 5]
        tags = {i: bank.snapshot.locate(i)[0].meta[bank.snapshot.locate(i)[1]]["tag"] for i in bank.live_ids()}
        assert tags == {0: 0, 2: 20, 3: 3, 4: 10, 5: 11}
        for i, tag in tags.items():
            k, _ = kv_of(bank, i, layer=1)
            want = tagged_kv(tag, k.shape[0], 2, 2, 16)[0][1]
            tol = 0 if bank.spec.scheme in ("fp32", "fp16") and quant == "fp32" else 0.05
            np.testing.assert_allclose(k.float().numpy(), want, atol=tol, rtol=0)


def test_bank_commands(tmp_path, capsys):
    from kvi_engine.cli import main as cli
    root = create_tagged_bank(tmp_path / "b", [0, 1, 2, 3], "fp16")
    assert cli.main(["bank", "verify", str(root)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert cli.main(["bank", "remove", str(root), "--ids", "1,2"]) == 0
    assert cli.main(["bank", "requantize", str(root), "--quant", "int4:g8"]) == 0
    assert "-> {'scheme': 'int4', 'group_size': 8" in capsys.readouterr().out
    assert cli.main(["bank", "compact", str(root)]) == 0
    bank = KVBank.open(root, verify=True)
    assert bank.live_ids() == [0, 3] and bank.quant["scheme"] == "int4"
    assert cli.main(["bank", "remove", str(root), "--ids", "1"]) == 2
    assert "already removed" in capsys.readouterr().err
    seg = bank.segments[0]
    raw = bytearray(seg.path.read_bytes())
    raw[seg.c.sections["v_scale"].offset] ^= 0xFF
    seg.path.write_bytes(bytes(raw))
    assert cli.main(["bank", "verify", str(root)]) == 2
    assert "section 'v_scale' fails its checksum" in capsys.readouterr().err
