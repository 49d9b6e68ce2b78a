"""prefix_attention backends (C++, Triton under TRITON_INTERPRET=1) against the PyTorch reference.

Banks are real: compiled by tiny random models in every storage scheme, so the kernels read the format exactly as
kvi_engine.bank.quant specifies it. Queries are scaled so attention is peaked (a wrong code, scale, rotation or slot shows
up far above the tolerance), and own K/V have the bank's magnitude so injected tokens matter.
"""
import atexit
import functools
import os
import shutil
import tempfile

import pytest
import torch

from kvi_engine import _core, dispatch
from kvi_engine.attention import cpp as attention_cpp
from kvi_engine.attention import op as attention
from kvi_engine.attention.reference import causal_mask, reference
from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.layer import bank_layer
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.compile.compiler import add_capsules, compile_bank
from kvi_engine.plan import gather
from kvi_engine.plan.arena import ARENA, DEFAULT_MAX_BYTES, Arena, _max_bytes_from_env, size_class
from kvi_engine.plan.plan import build_plan
from kvi_engine.plan.tables import rope_table, slot_tables
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, assert_close, tokenizer
from kvi_engine.testing.tiny import tiny_model

SCHEMES = ["fp32", "fp16", "bf16", "int8", "int4", "int2", "fp8", "int8:channel", "int4:g8:channel"]
# name -> (family, bos, model dims): head dims 16/32/64/128, GQA 2, 4, 7 and MHA, with and without shared prefix.
DIMS = {
    "tiny": ("llama", True, dict()),
    "d64_gqa4": ("qwen3", False, dict(hidden=128, heads=8, kv_heads=2, head_dim=64)),
    "d128_mha": ("qwen2", True, dict(hidden=256, heads=2, kv_heads=2, head_dim=128)),
    "d32_gqa7": ("mistral", False, dict(hidden=224, heads=7, kv_heads=1, head_dim=32)),
}
ONE_TOKEN = Capsule("SFTSV", "one", "virus")
LONG = Capsule("Mira Vance", "long", " ".join(["works for the Institute of Vector Biology in Kestrel Bay"] * 8))
TEMPLATES = {"one": "{object}", "long": "{subject} {object}."}
EXTRA = [Capsule("Oslo", "capital_of", "Norway"), Capsule("Favipiravir", "inhibits", "viral RNA polymerase")]
TRITON = dispatch.triton_runnable()
# Under the interpreter Triton runs on CPU tensors; on a GPU machine (bench/gpu.sh) its inputs go to the device.
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not dispatch.cuda_available() else "cuda"
_ROOT = tempfile.mkdtemp(prefix="kvi-attn-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def tiny(dims: str):
    family, bos, kw = DIMS[dims]
    return tiny_model(family, tokenizer(bos), **kw), tokenizer(bos)


@functools.lru_cache(maxsize=None)
def bank_for(dims: str, scheme: str, segments: int = 1):
    m, tok = tiny(dims)
    path = os.path.join(_ROOT, f"{dims}-{scheme.replace(':', '_')}-{segments}")
    bank = compile_bank(m, tok, [*CAPSULES, ONE_TOKEN, LONG], path, quant=scheme, entities=ENTITIES,
                        templates=TEMPLATES, progress=False)
    assert bank.ranges[5, 1] == 1 and bank.ranges[6, 1] > 60, "need a one-token and a long capsule"
    if segments > 1:
        add_capsules(path, m, tok, EXTRA, templates=TEMPLATES, progress=False)
        bank = KVBank.open(path)
    return bank


def inputs(dims, bank, batch, q_len, kv_len, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, _ = tiny(dims)
    Hq, Hkv, D = m.config.num_attention_heads, bank.shape.num_kv_heads, bank.shape.head_dim
    k_std = bank.gather_kv(0, torch.arange(bank.num_tokens))[0].float().std().item()
    q = torch.randn(batch, Hq, q_len, D, generator=g) * (4 / k_std / D ** 0.25)
    k = torch.randn(batch, Hkv, kv_len, D, generator=g) * k_std
    v = torch.randn(batch, Hkv, kv_len, D, generator=g) * k_std
    return m, q.to(dtype), k.to(dtype), v.to(dtype)


def rows(bank, batch, seed=0, long=True):
    """Ragged capsule lists: empty rows, the one-token and the long capsule, anchors, varying order. The
    interpreter pays for the widest row in every row, so its cases can leave the long capsule out."""
    g = torch.Generator().manual_seed(seed)
    base = [[], [5], [6, 0] if long else [2, 0], [3, 1, 4], [bank.num_capsules - 1, 5, 2],
            [0, 1, 2, 3, 4, 5, 6] if long else [0, 5, 3]]
    out = []
    for r in range(batch):
        ids = base[r % len(base)]
        perm = torch.randperm(len(ids), generator=g).tolist()
        out.append([ids[i] for i in perm])
    return out


@pytest.fixture(autouse=True)
def _independent_oracle(monkeypatch):
    """The oracle dequantises with the PyTorch codec, not csrc/kvi/quant.h, which the C++ kernel shares."""
    monkeypatch.setenv("KVI_BACKEND_BANK_DEQUANT", "reference")


TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (4e-2, 4e-2)}


def check(backend, bank, plan, q, k, v, mask, m, layers=None, dtype=torch.float32):
    for layer in layers if layers is not None else range(bank.num_layers):
        want, want_lse = reference(q, k, v, mask, plan, layer, m, None)
        dev = TRITON_DEVICE if backend == "triton" else "cpu"
        q_, k_, v_, mask_ = (None if x is None else x.to(dev) for x in (q, k, v, mask))
        # SDPA returns no log-sum-exp (asked for one, it defers to the oracle): its output alone is checked
        lse = backend != "sdpa"
        got, got_lse = attention.prefix_attention(q_, k_, v_, mask_, plan, layer, m, None, backend=backend,
                                                  return_lse=lse)
        got = got.cpu()
        assert got.dtype == q.dtype and got.shape == want.shape
        atol, lse_tol = TOL[dtype]
        if backend == "triton" and dtype == torch.bfloat16:  # the interpreter truncates float -> bf16
            atol, lse_tol = 2 * atol, 2 * lse_tol
        assert_close(got, want, atol, f"{backend} out, layer {layer}")
        if lse:
            assert_close(got_lse.cpu(), want_lse, lse_tol, f"{backend} lse, layer {layer}")


def padded_mask(batch, q_len, kv_len, seed=0):
    """Causal own-KV mask with left padding of varying width; one row fully padded (sees only injected tokens)."""
    mask = causal_mask(q_len, kv_len, batch, "cpu").clone()
    for r in range(batch):
        mask[r, :, :, : (r * 3) % max(kv_len, 1)] = False
    mask[batch // 2] = False
    return mask


BACKENDS = ["cpp", "sdpa", pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="needs Triton"))]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_bank_format(backend, scheme):
    bank = bank_for("tiny", scheme)
    light = backend == "triton"
    m, q, k, v = inputs("tiny", bank, 6, 4, 7)
    plan = build_plan(bank, rows(bank, 6, long=not light), capsule_layers={3: [1], 6: [], 5: [0]})
    check(backend, bank, plan, q, k, v, None, m, layers=[1] if light else None)


@pytest.mark.parametrize("dims", list(DIMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_dims_and_gqa(backend, dims):
    scheme = "int4" if backend == "triton" else "int8"
    bank = bank_for(dims, scheme)
    m, q, k, v = inputs(dims, bank, 5, 3, 6, seed=1)
    check(backend, bank, build_plan(bank, rows(bank, 5, seed=1, long=backend == "cpp")), q, k, v, None, m,
          layers=[1])
    if backend == "cpp":  # cheap natively: more schemes at this size too
        for s in ("int4", "fp8"):
            b = bank_for(dims, s)
            check(backend, b, build_plan(b, rows(b, 5, seed=2)), q, k, v, padded_mask(5, 3, 6), m, layers=[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_sizes_prefill_and_decode(backend):
    """Batch 17, query 53 over own KV 97 (scaled down for the interpreter), decode steps, explicit padded masks."""
    bank = bank_for("d64_gqa4", "int8")
    big = backend == "cpp"
    B, Q, KV = (17, 53, 97) if big else (17, 3, 5)
    plan = build_plan(bank, rows(bank, B, seed=3, long=big), layers=[1], capsule_layers={0: (0, 2)})
    m, q, k, v = inputs("d64_gqa4", bank, B, Q, KV, seed=3)
    check(backend, bank, plan, q, k, v, padded_mask(B, Q, KV), m, layers=[0])  # padding, a fully padded row
    check(backend, bank, plan, q[:, :, -1:], k, v, None, m, layers=[1])        # decode: one query
    if big:
        check(backend, bank, plan, q, k, v, None, m)                           # prefill tail, causal
        additive = torch.zeros(B, 1, Q, KV).masked_fill(~padded_mask(B, Q, KV), torch.finfo(torch.float32).min)
        check(backend, bank, plan, q, k, v, additive, m, layers=[1])           # HF's float mask form
        m, q, k, v = inputs("d64_gqa4", bank, 3, 41, 41, seed=4)                           # prefill from scratch (Q == KV)
        check(backend, bank, build_plan(bank, rows(bank, 3, seed=4)), q, k, v, None, m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_activations(backend, dtype):
    bank = bank_for("tiny", "bf16" if dtype == torch.bfloat16 else "int4")
    m, q, k, v = inputs("tiny", bank, 4, 3, 5, dtype=dtype, seed=5)
    check(backend, bank, build_plan(bank, rows(bank, 4, seed=5, long=False)), q, k, v, padded_mask(4, 3, 5), m,
          layers=[0], dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_plans_and_segmented_bank(backend):
    bank = bank_for("tiny", "int4:g8:channel", segments=2)
    assert len(bank.segments) == 2
    m, q, k, v = inputs("tiny", bank, 4, 2, 4, seed=6)
    new = bank.num_capsules - 1  # in the second segment
    for caps in ([[], [], [], []], [[new], [0, new - 1], [], [5, new, 6]]):
        plan = build_plan(bank, caps, capsule_layers={0: [0]})
        check(backend, bank, plan, q, k, v, None, m, layers=[1])
    no_prefix = bank_for("d64_gqa4", "fp16")
    m, q, k, v = inputs("d64_gqa4", no_prefix, 2, 1, 1, seed=7)
    check(backend, no_prefix, build_plan(no_prefix, [[], []]), q, k, v, None, m)  # nothing injected at all


@pytest.mark.parametrize("width", [4, 8])
def test_cpp_vector_widths(width, monkeypatch):
    """The 4-wide baseline (SSE/NEON) and the 8-wide AVX2+FMA kernels both match the reference."""
    monkeypatch.setattr(attention_cpp, "VECTOR_WIDTH", width)
    for dims, scheme in (("tiny", "int4:g8:channel"), ("d32_gqa7", "int8"), ("d64_gqa4", "fp16")):
        bank = bank_for(dims, scheme)
        m, q, k, v = inputs(dims, bank, 5, 9, 13, seed=8)
        plan = build_plan(bank, rows(bank, 5, seed=8), capsule_layers={0: [0]})
        try:
            check("cpp", bank, plan, q, k, v, padded_mask(5, 9, 13), m, layers=[1])
        except ValueError as e:
            if width == 8 and "AVX2" in str(e):
                pytest.skip("this CPU has no AVX2+FMA")
            raise
        check("cpp", bank, plan, q[:, :, -1:], k, v, None, m, layers=[0])


def test_dispatch_selection_and_forced_backends(monkeypatch):
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert attention.select(cpu)[0] == "cpp"  # Triton under the interpreter is never chosen automatically
    assert attention.select(meta)[0] == "sdpa"  # the PyTorch paths run wherever their tensors are
    assert attention.select(meta, "reference")[0] == "reference"  # the float32 oracle, chosen through dispatch
    with pytest.raises(dispatch.BackendUnavailable, match="cannot run on meta"):
        attention.select(meta, "cpp")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not dispatch.cuda_available():
        with pytest.raises(dispatch.BackendUnavailable, match="triton"):
            attention.select(cpu, "triton")
    monkeypatch.setenv("KVI_BACKEND_PREFIX_ATTENTION", "reference")
    assert attention.select(cpu)[0] == "reference"


def test_cpp_rejects_bad_input():
    from kvi_engine import _core

    bank = bank_for("tiny", "int8")
    m, q, k, v = inputs("tiny", bank, 2, 2, 3)
    plan = build_plan(bank, [[0], [1]])
    with pytest.raises(TypeError, match="float64|dtype"):
        attention_cpp.prefix_attention_cpp(q.double(), k.double(), v.double(), None, plan, 0, m)
    with pytest.raises(ValueError, match="plan has 1 rows|own_k|shape"):
        attention_cpp.prefix_attention_cpp(q, k[:1], v[:1], None, plan, 0, m)
    t = slot_tables(plan, "cpu")[0]
    cos, sin = rope_table(plan, torch.float32)
    src = bank_layer(bank, 0)
    bad = t.token.clone()
    bad[1, -1] = bank.num_tokens + 5
    out, lse = torch.empty(2, 4, 2, 16), torch.empty(2, 4, 2)
    args = dict(query=q.numpy(), own_k=k.numpy(), own_v=v.numpy(), own_mask=None, bank_k=src.k.numpy(),
                bank_v=src.v.numpy(), bank_format="int8", prefix_k=src.prefix_k.numpy(), prefix_v=src.prefix_v.numpy(),
                prefix_format="fp16", token=bad.numpy(), visible=t.visible[0].numpy(), cos=cos.numpy(), sin=sin.numpy(),
                out=out.numpy(), lse=lse.numpy(), scale=0.25, k_scale=src.k_scale.numpy(), v_scale=src.v_scale.numpy(),
                group_size=16)
    with pytest.raises(ValueError, match="reads token"):
        _core.prefix_attention(**args)
    with pytest.raises(ValueError, match="needs its scales"):
        _core.prefix_attention(**{**args, "token": t.token.numpy(), "k_scale": None})
    with pytest.raises(ValueError, match="unknown storage format"):
        _core.prefix_attention(**{**args, "token": t.token.numpy(), "bank_format": "int3"})


def stale(shape, dtype):
    """An allocator whose memory holds NaN (a recycled buffer's stale contents): the gather must write it all."""
    return torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cpp_slot_gather_equals_pytorch_bit_for_bit(scheme):
    for dims, segments, kw in (("tiny", 1, {}), ("d64_gqa4", 2, dict(capsule_layers={0: [0]})),
                               ("d32_gqa7", 1, dict(layout="parallel"))):
        if segments > 1 and scheme not in ("fp32", "int8", "int4:g8:channel"):
            continue
        bank = bank_for(dims, scheme, segments)
        m, _ = tiny(dims)
        plan = build_plan(bank, rows(bank, 5, seed=3) + [list(range(bank.num_capsules))], **kw)
        for layer in range(bank.num_layers):
            want_k, want_v = gather.gather_reference(plan, layer, m, torch.float32, "cpu")
            got_k, got_v = gather.gather_cpp(plan, layer, m, torch.float32, "cpu", empty=stale)
            seen = plan.slot_valid(layer)[:, None, :, None].expand_as(want_k)
            assert torch.equal(got_k[seen], want_k[seen]) and torch.equal(got_v[seen], want_v[seen]), (dims, layer)
            assert not got_k[~seen].any() and not got_v[~seen].any(), "the pass zeroes slots masked at this layer"


def test_cpp_slot_gather_of_fp16_values_copies_their_bits():
    """An fp16 bank's values gathered as fp16 (the decode step's copy): the stored bits, equal to the float32
    gather's values; keys as in the float32 gather. Storage whose values are not fp16 numbers is refused."""
    for dims, segments in (("tiny", 1), ("d64_gqa4", 1)):
        bank = bank_for(dims, "fp16", segments)
        m, _ = tiny(dims)
        plan = build_plan(bank, rows(bank, 5, seed=3) + [list(range(bank.num_capsules))])
        assert gather.fp16_values(plan)
        for layer in range(bank.num_layers):
            want_k, want_v = gather.gather_reference(plan, layer, m, torch.float32, "cpu")
            got_k, got_v = gather.gather_cpp(plan, layer, m, torch.float32, "cpu", values=torch.float16, empty=stale)
            seen = plan.slot_valid(layer)[:, None, :, None].expand_as(want_k)
            assert got_v.dtype == torch.float16 and torch.equal(got_v.float()[seen], want_v[seen]), (dims, layer)
            assert torch.equal(got_k[seen], want_k[seen]) and not got_v[~seen].any() and not got_k[~seen].any()
    plan = build_plan(bank_for("tiny", "int8"), [[0, 1]])
    assert not gather.fp16_values(plan)
    with pytest.raises(ValueError, match="fp16 out_v needs fp16 storage"):
        gather.gather_cpp(plan, 0, tiny("tiny")[0], torch.float32, "cpu", values=torch.float16)


def test_slot_gather_dispatch(monkeypatch):
    bank = bank_for("tiny", "int8")
    m, _ = tiny("tiny")
    plan = build_plan(bank, [[0, 1]])
    calls = []
    real = _core.prefix_gather
    monkeypatch.setattr(_core, "prefix_gather", lambda **kw: calls.append(1) or real(**kw))
    gather.injected_kv(plan, 0, m, torch.float32, "cpu")
    assert calls, "float32 on the CPU: the C++ gather is the automatic choice"
    calls.clear()
    gather.injected_kv(plan, 1, m, torch.float16, "cpu")
    assert not calls, "other dtypes take the PyTorch gather"
    monkeypatch.setenv("KVI_BACKEND_SLOT_GATHER", "cpp")
    with pytest.raises(dispatch.BackendUnavailable, match="float32 on the CPU"):
        gather.injected_kv(plan, 1, m, torch.bfloat16, "cpu")


@pytest.mark.parametrize("backend", ["reference", "sdpa", "cpp"])
@pytest.mark.parametrize("q_len", [1, 3])
def test_capsule_lse_gives_each_capsules_attention_mass(backend, q_len):
    """``capsule_lse``: the log-sum-exp over each injected segment (shared prefix, then the row's capsules), so
    ``exp(capsule_lse - lse)`` is each capsule's attention mass (attribution). Against explicit softmax
    probabilities summed over each capsule's slots, laid out here from the bank's token ranges, with a capsule
    masked at layer 0, padding and empty rows."""
    bank = bank_for("tiny", "fp32")
    ids = rows(bank, 5, seed=7, long=False)
    plan = build_plan(bank, ids, capsule_layers={3: [1]})
    m, q, k, v = inputs("tiny", bank, 5, q_len, 6, seed=7)
    mask = padded_mask(5, q_len, 6)
    mask[len(ids) // 2] = causal_mask(q_len, 6, 1, "cpu")[0]  # no fully padded row: every query sees its own KV
    for layer in range(bank.num_layers):
        out, lse, seg = attention.prefix_attention(q, k, v, mask, plan, layer, m, None, backend=backend,
                                                   capsule_lse=True)
        want_out, want_lse = reference(q, k, v, mask, plan, layer, m, None)
        assert_close(out, want_out, 2e-5, f"{backend} out, layer {layer}")
        assert_close(lse, want_lse, 1e-4, f"{backend} lse, layer {layer}")
        k_inj, _, valid = gather.injected_kv(plan, layer, m, torch.float32, "cpu")
        Hq, D = q.shape[1], q.shape[3]
        keys = torch.cat([k_inj, k], 2).repeat_interleave(Hq // k.shape[1], dim=1).double()
        scores = (q.double() @ keys.transpose(-1, -2)) / D ** 0.5
        seen = torch.cat([valid[:, None, None, :].expand(-1, 1, q_len, -1), mask], -1)
        probs = torch.softmax(scores.masked_fill(~seen, float("-inf")), -1)
        assert seg.shape == (5, Hq, q_len, 1 + max(map(len, ids)))
        for r, row in enumerate(ids):
            start = bank.prefix_len
            bounds = [(0, start)]
            for c in row:
                bounds.append((start, start + int(bank.ranges[c, 1])))
                start = bounds[-1][1]
            for i, (a, b) in enumerate(bounds):
                want = probs[r, :, :, a:b].sum(-1)
                got = torch.exp(seg[r, :, :, i].double() - lse[r].double())
                assert_close(got, want, 1e-5, f"{backend} mass of segment {i}, row {r}, layer {layer}")
            assert (seg[r, :, :, len(bounds):] == float("-inf")).all()  # no capsule there: empty segment


def _explicit_decode(q, k_inj, v_inj, valid, own_k, own_v, own, segments):
    """Float64 softmax over [injected | own] keys with repeated KV heads: out, lse and per-segment lse."""
    B, Hq, Q, D = q.shape
    g = Hq // k_inj.shape[1]
    keys = torch.cat([k_inj, own_k], 2).repeat_interleave(g, 1).double()
    vals = torch.cat([v_inj, own_v], 2).repeat_interleave(g, 1).double()
    T = own_k.shape[2]
    if own is None:
        own = (torch.arange(T)[None, :] <= torch.arange(Q)[:, None] + T - Q).expand(B, Q, T)
    seen = torch.cat([valid[:, None, :].expand(B, Q, -1), own], -1)[:, None]
    scores = ((q.double() @ keys.transpose(-1, -2)) / D ** 0.5).masked_fill(~seen, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    out = torch.nan_to_num(torch.softmax(scores, -1)) @ vals
    seg = torch.logsumexp(scores[..., :k_inj.shape[2], None] + torch.log(segments.double())[:, None, None], -2)
    return out, lse, seg


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("shape", [(1, 12, 4, 1, 300, 9, 64), (3, 8, 2, 1, 17, 5, 16), (2, 4, 4, 3, 9, 6, 12),
                                   (2, 7, 1, 2, 0, 4, 32), (2, 6, 3, 1, 5, 1, 8)])
def test_decode_attention_against_explicit_softmax(backend, shape):
    """Op decode_attention (the decode step over the plan's gathered KV): its PyTorch twin and the C++ kernel
    against a float64 softmax -- GQA groups 1..7, head dims on the 4- and 8-wide paths (12 takes 4-wide), several
    query tokens, key counts that are not a multiple of the vector width, masked slots, a row that sees nothing, own
    masks given and causal, per-segment log-sum-exp with slots in no segment."""
    B, Hq, H, Q, S, T, D = shape
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(B, Hq, Q, D, generator=g) * 2
    k_inj, v_inj = torch.randn(B, H, S, D, generator=g), torch.randn(B, H, S, D, generator=g)
    own_k, own_v = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    valid = torch.rand(B, S, generator=g) > 0.3
    which = torch.randint(-1, 4, (B, S), generator=g)
    segments = torch.zeros(B, S, 4)
    segments[which >= 0] = torch.nn.functional.one_hot(which[which >= 0], 4).float()
    _, fn = dispatch.select("decode_attention", backend)
    for own in (None, torch.rand(B, Q, T, generator=g) > 0.4):
        if own is not None and B > 1:
            own[0], valid[0] = False, False  # row 0 sees nothing: zeros out, -inf lse
        out, lse, seg = fn(q, k_inj, v_inj, valid, own_k, own_v, own, None, segments)
        want_out, want_lse, want_seg = _explicit_decode(q, k_inj, v_inj, valid, own_k, own_v, own, segments)
        assert out.dtype == torch.float32 and out.shape == want_out.shape
        assert_close(out, want_out.float(), 2e-5, f"{backend} out")
        assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)) and torch.equal(torch.isinf(seg),
                                                                                     torch.isinf(want_seg))
        for got, want, what in ((lse, want_lse, "lse"), (seg, want_seg, "segment lse")):
            fin = torch.isfinite(want)
            if fin.any():  # (no key at all: nothing finite to compare)
                assert_close(got[fin], want[fin].float(), 1e-5, f"{backend} {what}")
        none = fn(q, k_inj, v_inj, valid, own_k, own_v, own, None, None)
        assert none[2] is None and torch.equal(none[0], out)


@pytest.mark.parametrize("decode", ["reference", "cpp"])
def test_decode_steps_of_both_decode_backends_equal_the_oracle(decode, monkeypatch):
    """Through prefix_attention (the "sdpa" backend's decode step over the plan's gathered KV), every bank format's
    layers, with padding, a fully padded row and ragged capsule lists."""
    monkeypatch.setenv("KVI_BACKEND_DECODE_ATTENTION", decode)
    for scheme in ("fp32", "int4"):
        bank = bank_for("d64_gqa4", scheme)
        plan = build_plan(bank, rows(bank, 6))
        m, q, k, v = inputs("d64_gqa4", bank, 6, 1, 7)
        check("sdpa", bank, plan, q, k, v, padded_mask(6, 1, 7), m)


def test_prepared_decode_step_equals_the_general_path(monkeypatch):
    """inject's per-layer decode step (one native call over arrays bound once per plan) runs the general path's
    kernel on the same inputs: the same bits with padded, broadcast and causal (None) own masks. Where the general
    path would run anything else it is not offered."""
    for scheme, values in (("int4", torch.float32), ("fp16", torch.float16), ("bf16", torch.float32)):
        bank = bank_for("d64_gqa4", scheme)
        plan = build_plan(bank, rows(bank, 6))
        m, q, k, v = inputs("d64_gqa4", bank, 6, 1, 7)
        pad = padded_mask(6, 1, 7)
        for layer in range(bank.num_layers):
            step = attention.decode_step(plan, layer, m, torch.float32, q.device)
            assert step.v_inj.dtype == torch.empty(0, dtype=values).numpy().dtype  # an fp16 bank's values stay fp16 (exact), others float32
            for mask in (pad, pad[2:3], None):
                want, _ = attention.prefix_attention(q, k, v, mask, plan, layer, m, 0.3)
                shape = None if mask is None else tuple(mask.shape)
                assert torch.equal(step(q, k, v, mask, 0.3), want), f"{scheme} layer {layer}, mask {shape}"
            want = attention.prefix_attention(q, k, v, pad, plan, layer, m, 0.3, capsule_lse=True)
            got = step(q, k, v, pad, 0.3, capsule_lse=True, segments=plan.segments)  # attribution: out, lse, seg lse
            assert all(torch.equal(g, w) for g, w in zip(got, want)), f"{scheme} layer {layer}, capsule_lse"
    assert attention.decode_step(build_plan(bank, rows(bank, 2)), 0, m, torch.float32, "cpu", "reference") is None
    monkeypatch.setenv("KVI_BACKEND_DECODE_ATTENTION", "reference")
    assert attention.decode_step(build_plan(bank, rows(bank, 2)), 0, m, torch.float32, "cpu") is None
    monkeypatch.setenv("KVI_REFERENCE_CACHE_MAX_MB", "0")  # past the copy's cap decode runs the fused kernel
    monkeypatch.delenv("KVI_BACKEND_DECODE_ATTENTION")
    assert attention.decode_step(build_plan(bank, rows(bank, 2)), 0, m, torch.float32, "cpu") is None


def test_arena_recycles_memory_only_after_its_owner_dies():
    class Owner:
        pass

    assert [size_class(n) for n in (1, 4097, 8000, 8193, 1 << 20)] == [4096, 4608, 8192, 9216, 1 << 20]
    arena = Arena(max_bytes=2 * 8192)
    owner, x = Owner(), arena.empty((2048,), torch.float32)
    arena.adopt(owner, [x])
    ptr = x.data_ptr()
    del x
    assert arena.empty((2048,), torch.float32).data_ptr() != ptr and arena.hits == 0, "its owner still holds it"
    del owner
    assert arena.free_bytes == 8192
    assert arena.empty((4096,), torch.float32).data_ptr() != ptr, "16 KiB: another size class"
    y = arena.empty((40, 100), torch.float16)  # 8,000 bytes: the same class
    assert y.data_ptr() == ptr and y.shape == (40, 100) and arena.hits == 1 and arena.free_bytes == 0
    owners = [Owner() for _ in range(3)]
    for o in owners:
        arena.adopt(o, [arena.empty((2048,), torch.float32)])
    del owners, o
    assert arena.free_bytes == 2 * 8192, "bounded: the buffer freed first is dropped"
    other, owner = Arena(), Owner()
    other.adopt(owner, [torch.empty(2000)])  # 8,000 bytes: not a size class, so not one of the arena's
    del owner
    assert other.free_bytes == 0


def test_arena_size_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("KVI_STEP_ARENA_MAX_MB", raising=False)
    assert _max_bytes_from_env() == DEFAULT_MAX_BYTES
    monkeypatch.setenv("KVI_STEP_ARENA_MAX_MB", "1.5")
    assert _max_bytes_from_env() == 3 << 19
    monkeypatch.setenv("KVI_STEP_ARENA_MAX_MB", "0")
    arena, owner = Arena(_max_bytes_from_env()), object.__new__(type("Owner", (), {}))
    arena.adopt(owner, [arena.empty((2048,), torch.float32)])
    del owner
    assert arena.free_bytes == 0, "0 MiB: nothing is kept"
    for bad in ("lots", "-1"):
        monkeypatch.setenv("KVI_STEP_ARENA_MAX_MB", bad)
        with pytest.raises(ValueError, match="KVI_STEP_ARENA_MAX_MB"):
            _max_bytes_from_env()


@pytest.mark.parametrize("scheme", ["fp16", "int4"])
def test_decode_step_memory_goes_back_to_the_arena_with_its_plan(scheme):
    """A step owns its gathered copy (fp16 values for an fp16 bank). When the plan dies its memory returns to the
    arena at once (no reference cycle: the cyclic collector is off here), and the next plan's steps reuse it:
    holding stale NaNs there, they still equal the general path (the gather writes every slot, zeros where
    masked). A bank whose float32 copy the plan already holds shares it (int4), an fp16 bank keeps its own."""
    import gc

    bank = bank_for("d64_gqa4", scheme)
    m, q, k, v = inputs("d64_gqa4", bank, 6, 1, 7)
    pad = padded_mask(6, 1, 7)
    ARENA.clear()
    gc.disable()
    try:
        plan = build_plan(bank, rows(bank, 6))
        steps = [attention.decode_step(plan, layer, m, torch.float32, "cpu") for layer in range(bank.num_layers)]
        held = sum(t.untyped_storage().nbytes() for s in steps for t in s._tensors[:2])
        for s in steps:
            for t in s._tensors[:2]:
                t.fill_(float("nan"))
        del plan, steps, s, t
        assert ARENA.free_bytes == held
        hits = ARENA.hits
        plan = build_plan(bank, rows(bank, 6))
        steps = [attention.decode_step(plan, layer, m, torch.float32, "cpu") for layer in range(bank.num_layers)]
        assert ARENA.hits == hits + 2 * bank.num_layers and ARENA.free_bytes == 0
        for layer, step in enumerate(steps):
            want, _ = attention.prefix_attention(q, k, v, pad, plan, layer, m, 0.3)
            assert torch.equal(step(q, k, v, pad, 0.3), want), f"layer {layer}"
            shared = gather.cached_injected_kv(plan, layer, torch.float32, "cpu")  # the general path built it
            again = attention.decode_step(plan, layer, m, torch.float32, "cpu")
            assert (again.k_inj.ctypes.data == shared[0].data_ptr()) == (scheme != "fp16"), scheme
    finally:
        gc.enable()
        ARENA.clear()


def test_decode_attention_cpp_rejects_bad_input():
    f = lambda *s: torch.randn(*s).numpy()  # noqa: E731
    args = dict(query=f(1, 4, 1, 8), inj_k=f(1, 2, 3, 8), inj_v=f(1, 2, 3, 8),
                inj_valid=torch.ones(1, 3).byte().numpy(), own_k=f(1, 2, 2, 8), own_v=f(1, 2, 2, 8), own_mask=None,
                out=f(1, 4, 1, 8), lse=f(1, 4, 1), scale=0.3)
    _core.decode_attention(**args)
    with pytest.raises(ValueError, match="segment index 4 at slot 1 of row 0"):
        _core.decode_attention(**args, segment=torch.tensor([[0, 4, -1]], dtype=torch.int32).numpy(),
                               seg_lse=f(1, 4, 1, 2))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        _core.decode_attention(**{**args, "query": f(1, 3, 1, 8), "out": f(1, 3, 1, 8), "lse": f(1, 3, 1)})
    with pytest.raises(ValueError, match="head_dim must be a positive multiple of 4"):
        d6 = {n: f(*a.shape[:-1], 6) for n, a in args.items() if n in ("query", "inj_k", "inj_v", "own_k", "own_v", "out")}
        _core.decode_attention(**{**args, **d6})
    with pytest.raises(ValueError, match=r"inj_v: expected shape \[1, 2, 3, 8\], got \[1, 2, 4, 8\]"):
        _core.decode_attention(**{**args, "inj_v": f(1, 2, 4, 8)})
    with pytest.raises(ValueError, match="go together"):
        _core.decode_attention(**args, segment=torch.zeros(1, 3, dtype=torch.int32).numpy())
