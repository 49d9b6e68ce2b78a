"""KV bank v1: round trip, batched compile, storage formats, integrity and refusal errors."""
import pytest
import torch

from kvi_engine.bank.bank import KVBank
from kvi_engine.capsules.statements import render_statement
from kvi_engine.compile.capture import capture_kv
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.formats.container import BankFormatError
from kvi_engine.models.rope import UnsupportedRoPE
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer
from kvi_engine.testing.tiny import tiny_model


@pytest.fixture(scope="module")
def llama_bank(tmp_path_factory):
    m, tok = model("llama", True), tokenizer(True)
    return compile_bank(m, tok, CAPSULES, tmp_path_factory.mktemp("b") / "bank", quant="fp32", entities=ENTITIES,
                        progress=False, batch_size=3)


def test_round_trip_tables_and_kv_match_a_direct_forward(llama_bank):
    m, tok = model("llama", True), tokenizer(True)
    bank = KVBank.open(llama_bank.path.parent, verify=True)
    assert bank.num_capsules == len(CAPSULES) + len(ENTITIES)
    assert bank.prefix_token_ids == [tok.bos_token_id]
    for i, c in enumerate(CAPSULES):
        assert bank.capsule(i) == c
        assert bank.token_ids(i) == tok(render_statement(c), add_special_tokens=False).input_ids
    assert bank.capsule(len(CAPSULES)).kind == "anchor" and bank.statement(len(CAPSULES)) == "SFTSV is a virus."
    # Independent of compile's batching: capture one capsule directly and compare every layer.
    ids = bank.prefix_token_ids + bank.token_ids(4)
    with capture_kv(m) as rec, torch.no_grad():
        m(input_ids=torch.tensor([ids]))
    start, n = bank.ranges[4].tolist()
    for layer, (k, v) in rec.items():
        bk, bv = bank.layer_kv(layer)
        torch.testing.assert_close(bk[start:start + n], k[0, :, 1:].transpose(0, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(bv[start:start + n], v[0, :, 1:].transpose(0, 1), atol=1e-5, rtol=0)
        pk, pv = bank.prefix_kv(layer)
        torch.testing.assert_close(pk, k[0, :, :1].transpose(0, 1), atol=1e-5, rtol=0)


def test_batched_compile_equals_one_at_a_time(tmp_path, llama_bank):
    m, tok = model("llama", True), tokenizer(True)
    one = compile_bank(m, tok, CAPSULES, tmp_path / "one", quant="fp32", entities=ENTITIES, progress=False,
                       batch_size=1)
    for layer in range(one.num_layers):
        for a, b in zip(one.layer_kv(layer), llama_bank.layer_kv(layer)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("quant, dtype, tol", [("fp16", torch.float16, 2e-3), ("bf16", torch.bfloat16, 2e-2)])
def test_half_storage(tmp_path, llama_bank, quant, dtype, tol):
    m, tok = model("llama", True), tokenizer(True)
    b = compile_bank(m, tok, CAPSULES, tmp_path / quant, quant=quant, progress=False)
    k, v = b.layer_kv(1)
    assert k.dtype == dtype and b.bytes_per_token == llama_bank.bytes_per_token / 2
    n = b.num_tokens
    torch.testing.assert_close(k.float(), llama_bank.layer_kv(1)[0][:n], atol=tol, rtol=tol)
    KVBank.open(b.path, verify=True)


def test_flipped_byte_fails_its_section_checksum(tmp_path):
    m, tok = model("qwen2", False), tokenizer(False)
    bank = compile_bank(m, tok, CAPSULES, tmp_path / "b", quant="fp16", progress=False)
    path = bank.path
    raw = bytearray(path.read_bytes())
    sec = bank._c.sections["v"]
    raw[sec.offset + sec.nbytes // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    opened = KVBank.open(path)  # opening stays O(1): KV data is not read
    with pytest.raises(BankFormatError, match="section 'v' fails its checksum"):
        opened.verify()
    raw[sec.offset + sec.nbytes // 2] ^= 0x10
    meta = bank._c.sections["capsule_table"]
    raw[meta.offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BankFormatError, match="capsule_table"):
        KVBank.open(path).token_ids(0)


@pytest.mark.parametrize("cut", [10, 100, -5, -200])
def test_truncated_or_garbage_files_raise_clean_errors(tmp_path, cut):
    m, tok = model("qwen2", False), tokenizer(False)
    bank = compile_bank(m, tok, CAPSULES[:2], tmp_path / "b", quant="fp16", progress=False)
    data = bank.path.read_bytes()
    bank.path.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut])
    with pytest.raises(BankFormatError):
        KVBank.open(bank.path, verify=True)
    bank.path.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(BankFormatError, match="not a KV bank"):
        KVBank.open(bank.path)
    with pytest.raises(FileNotFoundError, match="no such bank"):
        KVBank.open(tmp_path / "missing")


def test_refuses_what_it_cannot_do_exactly(tmp_path):
    tok = tokenizer(False)
    dyn = tiny_model("llama", tok, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedRoPE, match="dynamic"):
        compile_bank(dyn, tok, CAPSULES, tmp_path / "b", progress=False)
    m = model("qwen2", False)
    with pytest.raises(ValueError, match="unknown bank storage"):
        compile_bank(m, tok, CAPSULES, tmp_path / "b", quant="int3", progress=False)
    with pytest.raises(ValueError, match="nothing to compile"):
        compile_bank(m, tok, [], tmp_path / "b", progress=False)
    bank = compile_bank(m, tok, CAPSULES[:1], tmp_path / "b", progress=False)
    with pytest.raises(IndexError, match="out of range"):
        bank.token_ids(1)
    with pytest.raises(TypeError):
        bank.capsule("0")
    assert not any(p.name.startswith(".") for p in (tmp_path / "b").iterdir())  # no temp files left behind


def test_fingerprint_survives_save_load_and_dtype_but_not_other_weights(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvi_engine.models import fingerprint as fp
    m, tok = model("qwen2", True), tokenizer(True)
    stored = fp.fingerprint(m, tok)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for dtype in (torch.float32, torch.bfloat16):
        fp.check(stored, AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=dtype),
                 AutoTokenizer.from_pretrained(tmp_path / "m"))
    with pytest.raises(fp.FingerprintMismatch, match="different weights"):
        fp.check(stored, model("qwen2", True, seed=5), tok)
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    fp.check(stored, tuned, tok)
    with torch.no_grad():  # a small fine-tune of one layer's value projection, in place
        tuned.model.layers[1].self_attn.v_proj.weight.mul_(1.01)
    with pytest.raises(fp.FingerprintMismatch, match=r"layers\.1\.self_attn\.v_proj"):
        fp.check(stored, tuned, tok)
    with pytest.raises(fp.FingerprintMismatch, match="different tokenizer"):
        fp.check(stored, m, tokenizer(False))
