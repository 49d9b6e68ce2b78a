"""The vLLM integration's pieces that need no vLLM (its end-to-end tests run in vLLM's own environment:
tests/vllm/run.sh): what it imports, the layout and salt of a request, the KV it writes against the keys and values
an HF forward computes, the bank/model check from checkpoint files, and ``kvi bench vllm`` without vLLM."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import kvi_engine as kvi
from kvi_engine.integrations.vllm import bank_identity, cache_salt, capsule_request, kv_transfer_config
from kvi_engine.integrations.vllm.check import check_bank_model
from kvi_engine.integrations.vllm.kv import injected_kv, local_heads
from kvi_engine.integrations.vllm.layout import capsule_plan
from kvi_engine.testing.helpers import CAPSULES, assert_close
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer

ROPES = {"default": None,
         "llama3": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
         "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024}}


def test_integration_imports_no_transformers_and_no_vllm():
    """vLLM pins its own transformers: the integration (all but the connector module, which vLLM loads) imports
    neither transformers nor vLLM."""
    code = ("import sys, kvi_engine.integrations.vllm, kvi_engine.integrations.vllm.kv, "
            "kvi_engine.integrations.vllm.check; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "kvi_engine" in loaded and "torch" in loaded
    assert not loaded & {"transformers", "vllm"}, loaded & {"transformers", "vllm"}


@pytest.fixture(scope="module", params=[("qwen2", False), ("llama", True)], ids=["qwen2", "llama-bos"])
def tiny(request, tmp_path_factory):
    family, bos = request.param
    tok = tiny_tokenizer(bos=bos)
    m = tiny_model(family, tok, hidden=64, heads=4, kv_heads=2)
    d = tmp_path_factory.mktemp(family)
    bank = kvi.compile_bank(m, tok, CAPSULES, d / "bank", quant="fp32", progress=False)
    m.save_pretrained(d / "model")
    return m, tok, bank, d


def test_request_layout_and_salt(tiny):
    m, tok, bank, _ = tiny
    r = capsule_request(bank, [3, 0, 2], [7, 8, 9], bank_name="b")
    n = bank.prefix_len + sum(len(bank.token_ids(c)) for c in [3, 0, 2])
    assert r.num_injected == n and r.prompt_token_ids == [0] * n + [7, 8, 9]
    spec = r.kv_transfer_params["kvi"]
    assert spec == {"capsule_ids": [3, 0, 2], "num_tokens": n, "placeholder_id": 0, "bank": bank_identity(bank),
                    "bank_name": "b"}
    assert r.prompt == {"prompt_token_ids": r.prompt_token_ids, "cache_salt": r.cache_salt}
    assert r.openai_body()["kv_transfer_params"] == r.kv_transfer_params
    salts = {cache_salt(bank, ids) for ids in ([3, 0, 2], [0, 3, 2], [3, 0], [1])}
    assert len(salts) == 4 and cache_salt(bank, [3, 0, 2]) == r.cache_salt, "order and set both key the cache"
    with pytest.raises(IndexError, match="capsule id 99 out of range"):
        capsule_request(bank, [0, 99], [1])
    with pytest.raises(ValueError, match="twice"):
        capsule_request(bank, [1, 1], [1])
    with pytest.raises(ValueError, match="at least one token"):
        capsule_request(bank, [1], [])
    with pytest.raises(TypeError):
        capsule_request(bank, 3, [1])
    cfg = kv_transfer_config(bank, trace_file="t")
    assert cfg["kv_connector_module_path"] == "kvi_engine.integrations.vllm.connector"
    assert cfg["kv_connector_extra_config"] == {"trace_file": "t", "bank": str(bank.root)}
    paths = kv_transfer_config(banks={"a": bank.root, "b": str(bank.root), "c": bank})["kv_connector_extra_config"]
    assert paths == {"banks": {"a": str(bank.root), "b": str(bank.root), "c": str(bank.root)}}
    with pytest.raises(ValueError, match="needs a bank"):
        kv_transfer_config()


def test_salt_follows_the_bank_state(tiny, tmp_path):
    m, tok, bank, d = tiny
    import shutil

    copy = shutil.copytree(bank.root, tmp_path / "bank")
    before = kvi.KVBank.open(copy)
    kvi.add_capsules(copy, m, tok, [kvi.Capsule("Tamsk", "located_in", "Norway")])
    after = kvi.KVBank.open(copy)
    assert bank_identity(after) != bank_identity(before)
    assert cache_salt(after, [0, 1]) != cache_salt(before, [0, 1]), "an updated bank never reuses cached KV"


def _hf_keys_values(m, ids, positions):
    """Post-RoPE keys and values ``[layers, len, kv_heads, head_dim]`` of one plain HF forward."""
    with torch.no_grad():
        cache = m(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), use_cache=True).past_key_values
    return (torch.stack([layer.keys[0].transpose(0, 1) for layer in cache.layers]),
            torch.stack([layer.values[0].transpose(0, 1) for layer in cache.layers]))


def test_injected_kv_is_what_the_model_computes(tiny):
    """One capsule: the KV written for the placeholders is an HF forward's over [prefix, capsule]. Several without a
    prefix: each capsule's KV is an HF forward over it alone at its stacked positions (with a prefix, capsule i >= 2
    sits further from it than when compiled: the documented caveat, exact at layer 0 only)."""
    m, tok, bank, _ = tiny
    ids = [3, 0, 2]
    for case in ([ids[0]], ids):
        plan = capsule_plan(bank, case)
        for layer in range(bank.num_layers):
            k, v = injected_kv(plan, layer, torch.float32, "cpu")
            assert k.shape == (plan.num_slots, bank.shape.num_kv_heads, bank.shape.head_dim)
            p, start = bank.prefix_len, bank.prefix_len
            for c in case:
                toks = bank.token_ids(c)
                seq, pos = bank.prefix_token_ids + toks, list(range(p)) + list(range(start, start + len(toks)))
                hk, hv = _hf_keys_values(m, seq, pos)
                if len(case) == 1 or not p or layer == 0:
                    sl = slice(start, start + len(toks))
                    assert_close(k[sl], hk[layer, p:], 1e-5, f"keys, capsule {c}, layer {layer}")
                    assert_close(v[sl], hv[layer, p:], 1e-5, f"values, capsule {c}, layer {layer}")
                    if p:
                        assert_close(k[:p], hk[layer, :p], 1e-5, "prefix keys")
                start += len(toks)
            k2, v2 = injected_kv(plan, layer, torch.float32, "cpu", 2, plan.num_slots - 1)
            assert torch.equal(k2, k[2:-1]) and torch.equal(v2, v[2:-1]), "a token range is a slice of the whole"
    with pytest.raises(ValueError, match="outside"):
        injected_kv(capsule_plan(bank, [0]), 0, torch.float32, "cpu", 0, 10_000)


@pytest.mark.parametrize("rope", ROPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_without_a_model_equals_the_models_rotary(rope, dtype, tmp_path):
    """The worker has no HF model: cos/sin from the bank's RoPE parameters must equal the model's rotary module's,
    for the default, llama3 and YaRN (cos/sin scaled) variants, through both slot-gather backends."""
    from kvi_engine.plan import gather

    tok = tiny_tokenizer(bos=True)
    m = tiny_model("llama", tok, hidden=64, heads=4, kv_heads=2, **({"rope_parameters": ROPES[rope]} if ROPES[rope]
                                                                     else {}))
    bank = kvi.compile_bank(m, tok, CAPSULES, tmp_path / "bank", quant="int8", progress=False)
    assert bank.rope["rope_type"] == rope
    plan = capsule_plan(bank, [4, 1, 3, 0])
    for layer in range(bank.num_layers):
        want = gather.gather_reference(plan, layer, m, dtype, "cpu")
        got = gather.gather_reference(plan, layer, None, dtype, "cpu")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (rope, dtype, layer)
        if dtype == torch.float32:
            cpp = gather.gather_cpp(plan, layer, None, dtype, "cpu")
            assert torch.equal(cpp[0], want[0]) and torch.equal(cpp[1], want[1])


def test_local_heads_split_like_vllm():
    x = torch.arange(4 * 8 * 2).reshape(4, 8, 2)
    assert torch.equal(torch.cat([local_heads(x, 2, r, 4) for r in range(4)], 1), x)  # 8 heads over 4 ranks
    y = x[:, :2]
    assert [int(local_heads(y, 1, r, 4)[0, 0, 0]) for r in range(4)] == [0, 0, 2, 2]  # 2 heads replicated on 4
    assert local_heads(x, 8, 0, 1) is x


def test_check_bank_model_from_checkpoint_files(tiny, tmp_path):
    m, tok, bank, d = tiny
    from transformers import AutoConfig

    def served(model_dir):
        return SimpleNamespace(model_config=SimpleNamespace(model=str(model_dir),
                                                            hf_text_config=AutoConfig.from_pretrained(model_dir)))

    check_bank_model(bank, served(d / "model"))
    other = tiny_model(m.config.model_type, tok, seed=1, hidden=64, heads=4, kv_heads=2)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(kvi.FingerprintMismatch, match="different weights"):
        check_bank_model(bank, served(tmp_path / "other"))
    bigger = tiny_model(m.config.model_type, tok, hidden=64, heads=4, kv_heads=2, layers=3)
    bigger.save_pretrained(tmp_path / "bigger")
    with pytest.raises(kvi.FingerprintMismatch, match="bank shape"):
        check_bank_model(bank, served(tmp_path / "bigger"))
    scaled = tiny_model(m.config.model_type, tok, hidden=64, heads=4, kv_heads=2, rope_theta=500.0)
    scaled.save_pretrained(tmp_path / "theta")
    with pytest.raises(kvi.FingerprintMismatch, match="different model configuration"):
        check_bank_model(bank, served(tmp_path / "theta"))


def test_kvi_bench_vllm_without_vllm_says_how_to_get_it():
    """In the main environment (no vLLM) the benchmark names the way to vLLM's environment in one line, exit 2."""
    out = subprocess.run([sys.executable, "-m", "kvi_engine.cli.main", "bench", "vllm"], capture_output=True,
                         text=True)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "bash tests/vllm/env.sh" in lines[0], out.stderr
