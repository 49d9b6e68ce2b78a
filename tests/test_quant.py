"""Quantised banks: C++ codec == PyTorch reference bit for bit, error bounds, bank round trips per scheme, injection
through quantised banks within the documented tolerance, requantize."""
import shutil

import numpy as np
import pytest
import torch

from kvi_engine import _core
from kvi_engine.bank import quant
from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.spec import QuantSpec
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.generate.inject import inject
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer

SPECS = ["int8", "fp8", "int4", "int4:g8", "int2", "int2:g4", "int8:channel", "int4:channel", "fp8:channel"]
# Max |logit difference| against injecting the fp32 bank, tiny models (head_dim 16, logits |x| < 1): about 3x the
# worst value measured over the four families (README, "Quantised banks").
INJECT_TOL = {"fp16": 2e-4, "bf16": 2e-3, "int8": 5e-3, "fp8": 3e-2, "int4": 8e-2, "int2": 4e-1}


def assert_same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    bad = np.flatnonzero(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8))
    assert bad.size == 0, f"{what}: {bad.size} bytes differ, first at byte {bad[0]}"


def sample(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.logspace(-3, 2, d)[torch.randperm(d, generator=g)]
    if n > 4:
        x[0] = 0.0                          # all-zero row: zero scale
        x[1] = 3.25                         # constant row: zero range
        x[2, ::2] = 1e-30                   # subnormal-scale values
        x[3] = torch.linspace(-1, 1, d)     # exact ties after scaling
    if n > 10:
        x[4] = 1000.0 + torch.randn(d, generator=g) * 1e-3   # far from zero: fp16 zero point coarser than the range
        x[5] = torch.randn(d, generator=g) * 3e4             # |x| >= 32768 somewhere: no clipping search
        x[6] = torch.randn(d, generator=g)                   # Gaussian rows: the search clips
        x[7] = torch.randn(d, generator=g)
        x[7, 0] = 40.0                                       # one outlier
        x[8, : d // 2] = 0.0                                 # an all-zero group beside a live one
        x[9] = torch.randn(d, generator=g).abs() + 5.0       # one-signed, offset
    return x


def capsule_lengths(n):
    """Split n rows into capsules of 3, 1, 0, 5, 12, 2, ... tokens (an empty one included)."""
    out, cycle = [], [3, 1, 0, 5, 12, 2]
    while sum(out) < n:
        out.append(min(cycle[len(out) % 6], n - sum(out)))
    return torch.tensor(out)


@pytest.mark.parametrize("spec, n, d", [
    (spec, n, d) for n, d in [(1, 16), (53, 16), (97, 64), (17, 128), (301, 128)]
    for spec in SPECS + ["int4:g2", "int4:g32", "int2:g32"]
    if QuantSpec.parse(spec).group_size <= d  # a group wider than the head is not a valid spec
])
def test_cpp_codec_equals_reference_bit_for_bit(spec, n, d):
    s = QuantSpec.parse(spec)
    x = sample(n, d, seed=n * d)
    if s.key_mode == "token":
        codes, scale, zero = quant.encode_rows(x, s)
        c2, s2, z2 = _core.quant_encode_rows(x.numpy(), s.scheme, s.group_for(d))
        rows = np.arange(n, dtype=np.int64)
        params_rows = rows
    else:
        lengths = capsule_lengths(n)
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        codes, scale, zero = quant.encode_columns(x, s, indptr)
        c2, s2, z2 = _core.quant_encode_columns(x.numpy(), s.scheme, indptr.numpy())
        rows = np.arange(n, dtype=np.int64)
        params_rows = np.repeat(np.arange(len(lengths)), lengths.numpy()).astype(np.int64)
    assert_same(codes.numpy(), c2, "codes")
    assert_same(scale.numpy(), s2, "scale")
    assert (zero is None) == (z2 is None) and (zero is None or np.array_equal(zero.numpy(), z2))
    pr = torch.from_numpy(params_rows)
    ref = quant.decode(codes, scale[pr], None if zero is None else zero[pr], s.scheme)
    got = _core.quant_gather_decode(c2, s2, z2, s.scheme, d, rows, params_rows)
    assert_same(ref.numpy(), got, "decoded")
    # Error bound: half a quantisation step per element plus the fp16 rounding of the params (fp8: half an e4m3
    # mantissa step, 2^-4 relative, plus its subnormal step).
    err = (ref - x).abs()
    if s.key_mode == "token":
        G = d // scale.shape[1]
        step = scale.float().repeat_interleave(G, 1)
        amax = x.abs().reshape(n, -1, G).amax(-1).repeat_interleave(G, 1)
    else:
        step = scale[pr].float()
        amax = torch.stack([x[a:b].abs().amax(0) if b > a else torch.zeros(d)
                            for a, b in zip(indptr[:-1], indptr[1:])])[pr]
    slack = 2 ** -9 * amax + 448 * 2 ** -24  # fp16 params: relative rounding, and the subnormal step
    if s.scheme == "fp8":
        assert (err <= x.abs() * 2 ** -4 + step * 2 ** -9 + slack).all()
    elif s.has_zero:  # clipped ranges: half a step inside the decoded range, plus the distance to it outside
        zero_ = (zero.float().repeat_interleave(d // zero.shape[1], 1) if s.key_mode == "token"
                 else zero[pr].float())
        levels = (1 << (4 if s.scheme == "int4" else 2)) - 1
        outside = torch.maximum(zero_ - x, x - (zero_ + levels * step)).clamp_min(0)
        assert (err <= step * 0.5 + outside + slack).all()
    else:
        assert (err <= step * 0.5 + slack).all()


def test_half_and_e4m3_conversions_match_torch_on_every_pattern():
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    bits = bits[torch.isfinite(bits)]
    x = torch.cat([bits, bits * 1.0001, bits * 0.9999, torch.randn(5000) * 1e-5])
    x = x[torch.isfinite(x)]
    spec = QuantSpec("int8")
    # Scales are fp16(absmax / 127): compare C++ and torch rounding on 70k rows of one element each.
    x1 = x.reshape(-1, 1).repeat(1, 8) * 127
    x1 = x1[torch.isfinite(x1).all(1)]
    _, s_ref, _ = quant.encode_rows(x1, spec)
    _, s_cpp, _ = _core.quant_encode_rows(x1.numpy(), "int8", 8)
    assert_same(s_ref.numpy(), s_cpp, "fp16 rounding")
    grid = torch.cat([torch.linspace(-448, 448, 200_000), torch.linspace(-0.03, 0.03, 40_000)]).reshape(-1, 8)
    grid[:, 0] = 448.0  # scale exactly 1.0 so the codes are the plain e4m3 cast of the values
    c_ref, _, _ = quant.encode_rows(grid, QuantSpec("fp8"))
    c_cpp, _, _ = _core.quant_encode_rows(grid.numpy(), "fp8", 8)
    assert_same(c_ref.numpy(), c_cpp, "e4m3 codes")


def test_codec_refuses_bad_input():
    x = np.zeros((4, 16), np.float32)
    with pytest.raises(TypeError):
        _core.quant_encode_rows(x.astype(np.float64), "int8", 16)
    with pytest.raises(ValueError, match="unknown quantisation scheme"):
        _core.quant_encode_rows(x, "int3", 16)
    with pytest.raises(ValueError, match="group"):
        _core.quant_encode_rows(x, "int4", 6)
    with pytest.raises(ValueError, match="non-finite"):
        _core.quant_encode_rows(np.full((2, 16), np.inf, np.float32), "int8", 16)
    with pytest.raises(ValueError, match="non-finite"):
        quant.encode_rows(torch.full((2, 16), float("nan")), QuantSpec("int4"))
    c, s, z = _core.quant_encode_rows(x, "int4", 8)
    with pytest.raises(IndexError, match="out of range"):
        _core.quant_gather_decode(c, s, z, "int4", 16, np.array([4], np.int64), np.array([0], np.int64))
    with pytest.raises(ValueError, match="zero"):
        _core.quant_gather_decode(c, s, None, "int4", 16, np.array([0], np.int64), np.array([0], np.int64))
    with pytest.raises(ValueError, match="indptr"):
        _core.quant_encode_columns(x, "int8", np.array([0, 3], np.int64))
    for bad in ["int4:g7x", "int9", "fp16:g8", "int8:g8"]:
        with pytest.raises(ValueError):
            QuantSpec.parse(bad).group_for(16)


@pytest.fixture(scope="module")
def fp32_bank(tmp_path_factory):
    m, tok = model("llama", True), tokenizer(True)
    return compile_bank(m, tok, CAPSULES, tmp_path_factory.mktemp("q") / "fp32", quant="fp32", entities=ENTITIES,
                        progress=False)


@pytest.mark.parametrize("spec", ["int8", "fp8", "int4:g8", "int2:g8", "int8:channel", "int4:channel"])
def test_quantised_bank_round_trip(tmp_path, fp32_bank, spec):
    m, tok = model("llama", True), tokenizer(True)
    bank = compile_bank(m, tok, CAPSULES, tmp_path / "b", quant=spec, entities=ENTITIES, progress=False,
                        batch_size=3)
    bank = KVBank.open(bank.root, verify=True)
    s = QuantSpec.parse(spec)
    assert bank.quant == s.header(16) and bank.num_tokens == fp32_bank.num_tokens
    D, n, C = 16, bank.num_tokens, bank.num_capsules
    param_bytes = (4 if s.has_zero else 2) * (D // s.group_for(D))
    per_head = s.code_dim(D) + param_bytes
    expected = 2 * bank.num_layers * bank.shape.num_kv_heads * per_head * n
    if s.key_mode == "channel":  # key params per capsule and channel instead of per token
        extra = (2 if s.scheme in ("int8", "fp8") else 4)
        expected += bank.num_layers * bank.shape.num_kv_heads * (extra * D * C - (per_head - s.code_dim(D)) * n)
    assert bank.kv_bytes == expected
    idx = torch.tensor([[0, 5, n - 1], [3, 3, 7]])
    for layer in range(bank.num_layers):
        k, v = bank.gather_kv(layer, idx)
        kr, vr = bank.gather_kv(layer, idx, backend="reference")
        assert k.dtype == torch.float32 and k.shape == (2, 3, 2, 16)
        assert torch.equal(k, kr) and torch.equal(v, vr)  # C++ decode == reference decode, bit for bit
        k32, v32 = fp32_bank.gather_kv(layer, idx)
        rel = {"int8": 0.02, "fp8": 0.08, "int4": 0.25, "int2": 0.9}[s.scheme]
        for got, want in ((k, k32), (v, v32)):
            assert (got - want).norm() <= rel * want.norm(), (spec, layer)
    # Codes in the file are what the reference encoder gives for the fp32 KV (bit for bit).
    ref_k = fp32_bank.layer_kv(1)[0]
    seg = bank.segments[0]
    if s.key_mode == "token":
        codes, scale, _ = quant.encode_rows(ref_k.reshape(-1, D), s)
        assert_same(seg.c.array("k")[1].reshape(-1, codes.shape[1]), codes.numpy(), "stored codes")
        assert_same(seg.c.array("k_scale")[1].reshape(-1, scale.shape[1]), scale.numpy(), "stored scales")


_REF = {}


def reference_logits(family, tmp_path_factory):
    """fp32-bank injection logits per family (compiled once per module)."""
    if family not in _REF:
        m, tok = model(family, True), tokenizer(True)
        prompt = torch.tensor([tok("Which disease does SFTSV cause, and how is it spread?",
                                   add_special_tokens=False).input_ids] * 2)
        ref = compile_bank(m, tok, CAPSULES, tmp_path_factory.mktemp(family) / "fp32", quant="fp32",
                           entities=ENTITIES, progress=False)
        with torch.no_grad(), inject(m, ref, INJECT_ROWS, backend="reference"):
            _REF[family] = (prompt, m(input_ids=prompt).logits)
    return _REF[family]


INJECT_ROWS = [[0, 4, 5], [1]]
ALL_SPECS = ["fp16", "bf16", "int8", "int8:channel", "fp8", "int4:g8", "int2:g8"]


@pytest.mark.parametrize("family, spec", [(f, s) for f in ("llama", "qwen3") for s in ALL_SPECS] +
                         [(f, s) for f in ("qwen2", "mistral") for s in ("int8", "int4:g8")])
def test_injection_through_quantised_bank(family, spec, tmp_path, tmp_path_factory):
    m, tok = model(family, True), tokenizer(True)
    prompt, want = reference_logits(family, tmp_path_factory)
    bank = compile_bank(m, tok, CAPSULES, tmp_path / "q", quant=spec, entities=ENTITIES, progress=False)
    with torch.no_grad(), inject(m, bank, INJECT_ROWS, backend="reference"):
        got = m(input_ids=prompt).logits
    tol = INJECT_TOL[QuantSpec.parse(spec).scheme]
    assert (got - want).abs().max() <= tol
    if bank.spec.quantised:
        # Exactness of the quantised path itself: the same logits as an fp32 bank holding the dequantised KV.
        deq = tmp_path / "deq"
        shutil.copytree(bank.root, deq)
        bank_updates.requantize(deq, "fp32")
        with torch.no_grad(), inject(m, KVBank.open(deq), INJECT_ROWS, backend="reference"):
            exact = m(input_ids=prompt).logits
        torch.testing.assert_close(got, exact, atol=1e-5, rtol=0)


def test_requantize_equals_direct_compile(tmp_path, fp32_bank):
    m, tok = model("llama", True), tokenizer(True)
    direct = compile_bank(m, tok, CAPSULES, tmp_path / "direct", quant="int4:g8", entities=ENTITIES, progress=False)
    shutil.copytree(fp32_bank.root, tmp_path / "re")
    report = bank_updates.requantize(tmp_path / "re", "int4:g8")
    assert report["from"] == {"scheme": "fp32"} and report["live_capsules"] == direct.num_capsules
    re = KVBank.open(tmp_path / "re", verify=True)
    for name in ("k", "v", "k_scale", "k_zero", "v_scale", "v_zero", "token_ids", "capsule_table"):
        assert_same(re.segments[0].c.array(name), direct.segments[0].c.array(name), name)
    assert [re.capsule(i) for i in range(re.num_capsules)] == [direct.capsule(i) for i in range(re.num_capsules)]


def min_max_reconstruction(xg, levels):
    """Plain min/max intN params (the encoder before the clipping search), written out independently."""
    lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
    s, z = ((hi - lo) / levels).half().float(), lo.half().float()
    q = torch.where(s > 0, torch.round((xg - z) / torch.where(s > 0, s, 1.0)).clamp(0, levels), 0.0)
    return q * s + z


@pytest.mark.parametrize("spec, gain", [("int4", 0.05), ("int4:g32", 0.05), ("int2", 0.25), ("int2:g8", 0.15)])
def test_clipping_search_never_loses_to_min_max(spec, gain):
    s = QuantSpec.parse(spec)
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(3000, 128, generator=g),                                      # Gaussian, like KV
                   torch.randn(500, 128, generator=g) ** 3,                                  # heavy tails
                   torch.rand(500, 128, generator=g) * 4 - 1,                                # uniform, offset
                   sample(301, 128, seed=3)])
    G, levels = s.group_for(128), (1 << (4 if s.scheme == "int4" else 2)) - 1
    codes, scale, zero = quant.encode_rows(x, s)
    c2, s2, z2 = _core.quant_encode_rows(x.numpy(), s.scheme, G)  # and the C++ search agrees on every group
    assert_same(codes.numpy(), c2, "codes")
    assert_same(scale.numpy(), s2, "scale")
    assert_same(zero.numpy(), z2, "zero")
    xg = x.double().reshape(len(x), -1, G)
    got = quant.decode(codes, scale, zero, s.scheme).double().reshape(xg.shape)
    base = min_max_reconstruction(x.reshape(xg.shape), levels).double()
    sse, sse0 = ((got - xg) ** 2).sum(-1), ((base - xg) ** 2).sum(-1)
    m = xg.abs().amax(-1)
    assert (sse <= sse0 + G * 2.0 ** -30 * m * m).all()  # the search compares fixed-point sums of 2^-30 m^2 units
    gauss = slice(0, 3000 * 128 // G)
    rel, rel0 = (e.reshape(-1)[gauss].sum().sqrt() / (xg.reshape(-1, G)[gauss] ** 2).sum().sqrt() for e in (sse, sse0))
    assert rel <= (1 - gain) * rel0, (float(rel), float(rel0))


def test_clipping_search_on_columns_never_loses_to_min_max():
    g = torch.Generator().manual_seed(8)
    lengths = torch.tensor([1, 0, 7, 64, 3, 200, 2])
    x = torch.randn(int(lengths.sum()), 32, generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    for spec in ("int4:channel", "int2:channel"):
        s = QuantSpec.parse(spec)
        codes, scale, zero = quant.encode_columns(x, s, indptr)
        c2, s2, z2 = _core.quant_encode_columns(x.numpy(), s.scheme, indptr.numpy())
        assert_same(codes.numpy(), c2, "codes")
        assert_same(scale.numpy(), s2, "scale")
        assert_same(zero.numpy(), z2, "zero")
        seg = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        got = quant.decode(codes, scale[seg], zero[seg], s.scheme)
        levels = 15 if s.scheme == "int4" else 3
        for c, (a, b) in enumerate(zip(indptr[:-1], indptr[1:])):
            if b == a:
                continue
            xc = x[a:b].T.contiguous()
            sse = ((got[a:b].T.double() - xc.double()) ** 2).sum(-1)
            sse0 = ((min_max_reconstruction(xc, levels).double() - xc.double()) ** 2).sum(-1)
            m = xc.abs().amax(-1).double()
            assert (sse <= sse0 + (b - a) * 2.0 ** -30 * m * m).all(), (spec, c)
