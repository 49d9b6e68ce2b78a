"""Injection exactness against plain HF forward passes (the contract in DESIGN.md)."""
import pytest
import torch

from kvi_engine.compile.compiler import compile_bank
from kvi_engine.generate.engine import KVIEngine
from kvi_engine.generate.inject import inject
from kvi_engine.models.fingerprint import FingerprintMismatch
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, eager_logits, model, tokenizer

TOL = 1e-4


def bank_for(m, tok, tmp_path, **kw):
    return compile_bank(m, tok, CAPSULES, tmp_path / "bank", quant="fp32", entities=ENTITIES, progress=False, **kw)


def prompt_ids(tok, text="Which disease does SFTSV cause, and how is it spread?"):
    return tok(text, add_special_tokens=False).input_ids


def block_reference(m, prefix, caps, prompt, *, parallel=False):
    """Logits over ``prompt`` from ONE plain forward over [prefix, c1..cn, prompt] where every capsule attends the
    prefix and itself only, the prompt attends everything (causally to itself)."""
    seq = list(prefix) + [t for c in caps for t in c] + list(prompt)
    n, p = len(seq), len(prefix)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:p, :p] = torch.ones(p, p).tril().bool()
    pos, start, cursor = list(range(p)), p, p
    for c in caps:
        allowed[start:start + len(c), :p] = True
        allowed[start:start + len(c), start:start + len(c)] = torch.ones(len(c), len(c)).tril().bool()
        pos += list(range(cursor, cursor + len(c)))
        start += len(c)
        cursor = p if parallel else cursor + len(c)
    prompt_start = p + (max(map(len, caps), default=0) if parallel else sum(map(len, caps)))
    allowed[start:, :start] = True
    allowed[start:, start:] = torch.ones(len(prompt), len(prompt)).tril().bool()
    pos += list(range(prompt_start, prompt_start + len(prompt)))
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    logits = eager_logits(m, torch.tensor([seq]), attention_mask=mask, position_ids=torch.tensor([pos]))
    return logits[:, -len(prompt):]


@pytest.mark.parametrize("bos", [False, True])
def test_one_capsule_equals_plain_forward(family, bos, tmp_path):
    m, tok = model(family, bos), tokenizer(bos)
    bank = bank_for(m, tok, tmp_path)
    prompt = prompt_ids(tok)
    for c in (0, 4, bank.num_capsules - 1):  # a triple, a long triple, an entity anchor
        with inject(m, bank, [[c]]), torch.no_grad():
            got = m(input_ids=torch.tensor([prompt])).logits
        ref = eager_logits(m, torch.tensor([bank.prefix_token_ids + bank.token_ids(c) + prompt]))[:, -len(prompt):]
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    assert m.config._attn_implementation == "sdpa"  # patching undone


def test_stacked_capsules_equal_block_diagonal_forward(family, tmp_path):
    m, tok = model(family, False), tokenizer(False)
    bank = bank_for(m, tok, tmp_path)
    prompt = prompt_ids(tok)
    ids = [3, 0, 4, 1]
    with inject(m, bank, [ids]), torch.no_grad():
        got = m(input_ids=torch.tensor([prompt])).logits
    ref = block_reference(m, [], [bank.token_ids(c) for c in ids], prompt)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    # Capsules must not see each other: a forward where they do gives different logits.
    plain = eager_logits(m, torch.tensor([[t for c in ids for t in bank.token_ids(c)] + prompt]))[:, -len(prompt):]
    assert (plain - got).abs().max() > 1e-3


def test_stacked_capsules_with_shared_prefix_stay_within_documented_bound(tmp_path):
    """Capsules are compiled right after the BOS prefix; stacked, capsule i >= 2 sits further from it than when it
    was compiled, so with a prefix the stacked layout is close to, not equal to, the block-diagonal reference
    (README: 'One caveat, measured'). This pins the bound the README states."""
    m, tok = model("llama", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    prompt, ids = prompt_ids(tok), [3, 0, 4, 1]
    with inject(m, bank, [ids]), torch.no_grad():
        got = m(input_ids=torch.tensor([prompt])).logits
    ref = block_reference(m, bank.prefix_token_ids, [bank.token_ids(c) for c in ids], prompt)
    err = (got - ref).abs().max().item()
    assert TOL < err < 2e-3, err  # not exact (so the caveat is real), but within the documented bound
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_parallel_layout_with_shared_prefix(tmp_path):
    m, tok = model("llama", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    assert bank.prefix_token_ids, "the BOS tokenizer must give the bank a shared prefix"
    prompt, ids = prompt_ids(tok), [2, 0, 4]
    with inject(m, bank, [ids], layout="parallel"), torch.no_grad():
        got = m(input_ids=torch.tensor([prompt])).logits
    ref = block_reference(m, bank.prefix_token_ids, [bank.token_ids(c) for c in ids], prompt, parallel=True)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)


def test_ragged_left_padded_batch_equals_rows(tmp_path):
    m, tok = model("qwen3", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    prompts = [prompt_ids(tok), prompt_ids(tok, "Where is Oslo?"), prompt_ids(tok, "Who employs Mira Vance?")]
    caps = [[0, 1], [], [4, 2, 5]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with inject(m, bank, caps), torch.no_grad():
        batched = m(input_ids=ids, attention_mask=mask).logits
    for r, (p, c) in enumerate(zip(prompts, caps)):
        with inject(m, bank, [c]), torch.no_grad():
            row = m(input_ids=torch.tensor([p])).logits
        torch.testing.assert_close(batched[r, width - len(p):], row[0], atol=TOL, rtol=0)


def test_generate_batched_equals_row_by_row_and_prompt_is_computed(tmp_path):
    m, tok = model("llama", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    engine = KVIEngine(m, tok, bank)
    prompts = ["Which disease does SFTSV cause?", "Where is Oslo?", "Who employs Mira Vance in Kestrel Bay?"]
    caps = [[0, 1, 5], [2], []]
    batched = engine.generate(prompts, caps, max_new_tokens=6)
    rows = [engine.generate([p], [c], max_new_tokens=6).token_ids[0] for p, c in zip(prompts, caps)]
    assert batched.token_ids == rows
    assert engine.generate([prompts[2]], None, max_new_tokens=6).token_ids[0] == rows[2]  # no capsules == no bank
    # The first prompt token is attended, not swallowed by the prefix: changing it changes the logits.
    p = prompt_ids(tok, prompts[0])
    with inject(m, bank, [[0, 1]]), torch.no_grad():
        a = m(input_ids=torch.tensor([p])).logits[0, -1]
        b = m(input_ids=torch.tensor([[p[0] + 1] + p[1:]])).logits[0, -1]
    assert (a - b).abs().max() > 1e-4



@pytest.mark.parametrize("kw", [dict(num_beams=3, num_return_sequences=2), dict(num_beams=2),
                                dict(do_sample=True, num_return_sequences=3, top_k=4)])
def test_generate_beams_and_return_sequences_expand_the_plan(kw, tmp_path):
    """generate() repeats every row by num_beams / num_return_sequences before its first forward; the plan's rows
    expand the same way, so each row still sees its own capsules: equal to plain generate over
    [prefix, capsule, prompt] (one capsule: the injection is exactly the plain forward), row by row."""
    m, tok = model("llama", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    prompt = prompt_ids(tok, "What does the virus cause")
    caps = [[0], [4]]
    opts = dict(max_new_tokens=6, pad_token_id=tok.pad_token_id, **kw)
    opts.setdefault("do_sample", False)
    torch.manual_seed(11)
    with inject(m, bank, caps), torch.no_grad():
        got = m.generate(input_ids=torch.tensor([prompt] * 2), attention_mask=torch.ones(2, len(prompt)), **opts)
    got = got[:, len(prompt):]
    per = got.shape[0] // 2
    assert per == kw.get("num_return_sequences", 1)
    for r, c in enumerate(caps):
        full = bank.prefix_token_ids + bank.token_ids(c[0]) + prompt
        torch.manual_seed(11 + r)
        with torch.no_grad():
            want = m.generate(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full)), **opts)
        if opts["do_sample"]:  # sampled: each returned sequence is a valid top-k continuation of its own row
            for seq in got[r * per:(r + 1) * per]:
                with torch.no_grad():
                    logits = m(input_ids=torch.tensor([full + seq.tolist()[:-1]])).logits[0, len(full) - 1:]
                ranks = (logits > logits.gather(1, seq[:, None])).sum(1)
                assert (ranks < 4).all(), ranks
        else:
            assert got[r * per:(r + 1) * per].tolist() == want[:, len(full):].tolist()
    with inject(m, bank, caps), torch.no_grad():  # outside generate(), a batch the plan does not cover is an error
        m.generate(input_ids=torch.tensor([prompt] * 2), attention_mask=torch.ones(2, len(prompt)), **opts)
        with pytest.raises(ValueError, match="batch of 4 rows but the injection plan has 2 rows"):
            m(input_ids=torch.tensor([prompt] * 4))
    assert "generate" not in m.__dict__ and "_expand_inputs_for_generation" not in m.__dict__


def test_layer_ranges_mask_instead_of_zero_fill(tmp_path):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    m, tok = model("mistral", False), tokenizer(False)
    bank = bank_for(m, tok, tmp_path)
    prompt, ids, visible = prompt_ids(tok), [0, 3], {1}
    with inject(m, bank, [ids], layers=(1, 2)), torch.no_grad():
        got = m(input_ids=torch.tensor([prompt])).logits
    caps = [bank.token_ids(c) for c in ids]
    n_caps = sum(map(len, caps))

    def masked_at_layers(module, q, k, v, mask, scaling=None, **kw):
        mask = mask.clone()
        if module.layer_idx not in visible:
            mask[:, :, n_caps:, :n_caps] = torch.finfo(mask.dtype).min
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        w = torch.softmax(q @ k.transpose(-1, -2) * scaling + mask, dim=-1)
        return (w @ v).transpose(1, 2), None

    AttentionInterface.register("test_layer_mask", masked_at_layers)
    ALL_MASK_ATTENTION_FUNCTIONS.register("test_layer_mask", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    old = m.config._attn_implementation
    seq = [t for c in caps for t in c] + prompt
    n = len(seq)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    s = 0
    for c in caps:
        allowed[s:s + len(c), s:s + len(c)] = torch.ones(len(c), len(c)).tril().bool()
        s += len(c)
    allowed[s:, :s] = True
    allowed[s:, s:] = torch.ones(len(prompt), len(prompt)).tril().bool()
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    m.set_attn_implementation("test_layer_mask")
    try:
        with torch.no_grad():
            ref = m(input_ids=torch.tensor([seq]), attention_mask=mask).logits[:, -len(prompt):]
    finally:
        m.set_attn_implementation(old)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    with inject(m, bank, [ids]), torch.no_grad():
        all_layers = m(input_ids=torch.tensor([prompt])).logits
    assert (all_layers - got).abs().max() > 1e-4


def test_capsule_layer_override_and_no_visible_layers(tmp_path):
    m, tok = model("qwen2", False), tokenizer(False)
    bank = bank_for(m, tok, tmp_path)
    prompt = torch.tensor([prompt_ids(tok)])
    with torch.no_grad():
        plain = m(input_ids=prompt).logits
        with inject(m, bank, [[0, 1]], layers=[]):
            hidden = m(input_ids=prompt).logits
        with inject(m, bank, [[1, 0]], layers=[], capsule_layers={0: (0, 2)}):
            only0 = m(input_ids=prompt).logits
        with inject(m, bank, [[0]]):
            just0 = m(input_ids=prompt).logits
    # Capsules invisible everywhere: positions shift but no content is seen. With RoPE's relative positions
    # the logits equal the plain model's.
    torch.testing.assert_close(hidden, plain, atol=TOL, rtol=0)
    # Capsule 1 masked at every layer but occupying the slots before capsule 0: capsule 0 and the prompt keep the
    # relative distances they have when capsule 0 is injected alone.
    torch.testing.assert_close(only0, just0, atol=TOL, rtol=0)


def test_errors_and_patch_undone(tmp_path):
    m, tok = model("qwen2", False), tokenizer(False)
    bank = bank_for(m, tok, tmp_path)
    prompt = torch.tensor([prompt_ids(tok)])
    with torch.no_grad():
        before = m(input_ids=prompt).logits
    with pytest.raises(IndexError, match=r"capsule_ids\[1\].*out of range"):
        with inject(m, bank, [[0], [bank.num_capsules]]):
            pass
    with pytest.raises(ValueError, match="twice"):
        with inject(m, bank, [[1, 1]]):
            pass
    with pytest.raises(ValueError, match="one list of capsule ids per batch row"):
        with inject(m, bank, []):
            pass
    with pytest.raises(TypeError, match="one list per batch row"):
        with inject(m, bank, [0, 1]):
            pass
    with inject(m, bank, [[0]]):
        with pytest.raises(RuntimeError, match="already active"):
            with inject(m, bank, [[1]]):
                pass
        with pytest.raises(ValueError, match="plan has 1 rows"):
            m(input_ids=prompt.repeat(2, 1))
    with pytest.raises(ZeroDivisionError):
        with inject(m, bank, [[0]]):
            1 / 0
    other = model("qwen2", False, seed=1)
    with pytest.raises(FingerprintMismatch, match="different weights"):
        with inject(other, bank, [[0]]):
            pass
    with pytest.raises(FingerprintMismatch, match="shape|configuration"):
        with inject(model("llama", False), bank, [[0]]):
            pass
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=prompt).logits, before, atol=0, rtol=0)
    assert all(getattr(mod, "_kvi_state", None) is None for mod in m.modules())
    assert not m.get_decoder()._forward_pre_hooks


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_static_cache_prefill_and_decode_equal_dynamic_cache(backend, tmp_path):
    """A static cache's prefill has kv_length = cache size > q_length: HF's SDPA skip (top-left causal) would let a
    prompt token see later ones and empty slots; the op must get the explicit mask there."""
    from transformers import DynamicCache, StaticCache

    m, tok = model("llama", True), tokenizer(True)
    bank = bank_for(m, tok, tmp_path)
    prompt = torch.tensor([prompt_ids(tok)])
    nxt = torch.tensor([[prompt_ids(tok, "fever")[0]]])
    logits = {}
    for name in ("dynamic", "static"):
        cache = DynamicCache(config=m.config) if name == "dynamic" else StaticCache(config=m.config, max_cache_len=64)
        with inject(m, bank, [[0, 4]], backend=backend), torch.no_grad():
            first = m(input_ids=prompt, past_key_values=cache, use_cache=True).logits
            step = m(input_ids=nxt, past_key_values=cache, use_cache=True,
                     cache_position=torch.tensor([prompt.shape[1]])).logits
        logits[name] = (first, step)
    torch.testing.assert_close(logits["static"][0], logits["dynamic"][0], atol=TOL, rtol=0)
    torch.testing.assert_close(logits["static"][1], logits["dynamic"][1], atol=TOL, rtol=0)
