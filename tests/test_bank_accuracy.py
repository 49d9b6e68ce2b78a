"""Bank accuracy report: Wilson intervals, the noise-floor banks, and the rows evaluate() returns."""
import math

import pytest
import torch

from kvi_engine.bank.quant import decode, encode_rows
from kvi_engine.bank.spec import QuantSpec
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.eval import coders
from kvi_engine.eval.bank_accuracy import evaluate, noise_label, perturbed_bank, wilson
from kvi_engine.testing.helpers import CAPSULES, model, tokenizer

PROMPTS = ["Which disease does SFTSV cause?", "Where is Oslo?", "Who was born in Oslo and when?"]


def test_wilson_interval_matches_published_values():
    # Wilson (1927) score interval, z = 1.96; values as tabulated by Newcombe (1998), Stat. Med. 17:857, table I.
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    lo, hi = wilson(285, 285)
    assert hi == 1.0 and lo == pytest.approx(285 / (285 + 1.96 ** 2), abs=1e-9)


def test_perturbed_bank_has_the_requested_error_and_nothing_else_changes(tmp_path):
    m, tok = model("llama", True), tokenizer(True)
    ref = compile_bank(m, tok, CAPSULES, tmp_path / "ref", quant="fp16", progress=False)
    a = perturbed_bank(ref, tmp_path / "a", 0.05, seed=1)
    b = perturbed_bank(ref, tmp_path / "b", 0.05, seed=1)
    assert a.spec.scheme == "fp32" and a.num_capsules == ref.num_capsules
    assert [a.token_ids(i) for i in range(a.num_capsules)] == [ref.token_ids(i) for i in range(ref.num_capsules)]
    num = den = 0.0
    for layer in range(ref.num_layers):
        for x, y, z in zip(a.layer_kv(layer), ref.layer_kv(layer), b.layer_kv(layer)):
            assert torch.equal(x, z)  # seeded
            num += float(((x - y.float()) ** 2).sum())
            den += float((y.float() ** 2).sum())
    assert math.sqrt(num / den) == pytest.approx(0.05, rel=0.05)


def test_evaluate_rows(tmp_path):
    m, tok = model("qwen3", True), tokenizer(True)
    rows = evaluate(m, tok, CAPSULES, PROMPTS, ["int8", "int2"], capsules_per_prompt=2, draws=2, noise=[0.01],
                    work_dir=tmp_path, simulate=["int2+hadamard"])
    by = {r["scheme"]: r for r in rows}
    assert list(by) == ["fp16", "int8", "int2", noise_label(0.01), "int2+hadamard"] and noise_label(0.01) == "noise@1%"
    assert by["int2+hadamard"]["simulated"] and by["int2+hadamard"]["bytes_ratio"] == by["int2"]["bytes_ratio"]
    n_tokens = sum(len(tok(p, add_special_tokens=False).input_ids) for p in PROMPTS)
    assert all(r["positions"] == 2 * n_tokens for r in rows)
    ref = by["fp16"]
    assert ref["top1_agreement"] == 1.0 and ref["kl"] == 0.0 and ref["attn_rel_err"] == 0.0
    assert by["int8"]["bytes_ratio"] == pytest.approx(0.5 + 1 / 16)  # head_dim 16
    assert by["noise@1%"]["kv_rel_err"] == pytest.approx(0.01, rel=0.1)
    assert 0 < by["int8"]["kv_rel_err"] < 0.01 < 0.2 < by["int2"]["kv_rel_err"]
    assert by["int8"]["attn_rel_err"] < by["int2"]["attn_rel_err"] and by["int8"]["kl"] < by["int2"]["kl"]
    for r in rows:
        lo, hi = r["top1_ci95"]
        assert lo <= r["top1_agreement"] <= hi and (lo, hi) == wilson(r["agree"], r["positions"])


def test_kvi_accuracy_command_passes_draws_and_noise(tmp_path, capsys):
    import json

    from kvi_engine.cli.main import main
    from kvi_engine.utils.paths import sample_dir

    out = tmp_path / "rows.json"
    assert main(["bank", "accuracy", "--capsules", str(sample_dir() / "capsules.jsonl"), "--questions",
                          str(sample_dir() / "questions.jsonl"), "--prompts", "2", "--per-prompt", "2", "--draws", "2",
                          "--noise", "0.01", "--schemes", "int8", "--json", str(out)]) == 0
    assert "2 prompts x 2 draws x 2 capsules" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["scheme"] for r in rows] == ["fp16", "int8", "noise@1%"]
    assert len({r["positions"] for r in rows}) == 1


def test_simulated_coders_are_the_reference_codec_around_their_transform(tmp_path):
    """A simulated bank holds decode(encode(x R)) R^T per layer and kv head (R: scipy's Sylvester Hadamard matrix,
    an independent construction), in the same token order as the reference bank."""
    from scipy.linalg import hadamard

    m, tok = model("llama", True), tokenizer(True)
    ref = compile_bank(m, tok, CAPSULES, tmp_path / "ref", quant="fp16", progress=False)
    sim = coders.simulated_bank(ref, tmp_path / "h", "int4+hadamard")
    D, spec = ref.shape.head_dim, QuantSpec.parse("int4")
    rot = torch.tensor(hadamard(D) / math.sqrt(D), dtype=torch.float32)
    for layer in range(ref.num_layers):
        for got, x in zip(sim.layer_kv(layer), ref.layer_kv(layer)):
            for h in range(x.shape[1]):
                codes, scale, zero = encode_rows(x[:, h].float() @ rot, spec)
                want = decode(codes, scale, zero, "int4") @ rot.T
                torch.testing.assert_close(got[:, h].float(), want, atol=1e-5, rtol=0)


def test_coders_take_out_what_a_per_token_range_wastes():
    """On rows with one outlier channel (keys, KIVI) the rotations beat the plain per-token code; on rows that are
    mostly one constant vector (the reader's early-layer keys) the per-channel statistics do."""
    g = torch.Generator().manual_seed(0)
    spec = QuantSpec.parse("int4")
    x = torch.randn(512, 2, 64, generator=g)
    outlier, offset = x.clone(), x + 8 * torch.randn(1, 2, 64, generator=g)
    outlier[:, :, 5] *= 30

    def err(y, coder=None):
        if coder:
            got = torch.from_numpy(coders.simulate(y.numpy(), spec, coder))
        else:
            codes, scale, zero = encode_rows(y.reshape(-1, 64), spec)
            got = decode(codes, scale, zero, "int4").reshape(y.shape)
        return float((got - y).norm() / y.norm())

    assert err(outlier, "hadamard") < 0.5 * err(outlier) and err(outlier, "rotate") < 0.75 * err(outlier)
    assert err(offset, "mean-scale") < 0.25 * err(offset)
    with pytest.raises(ValueError, match="unknown simulated coder"):
        coders.parse("int4+dct")
    with pytest.raises(ValueError, match="per-token quantised scheme"):
        coders.parse("fp16+hadamard")
    with pytest.raises(ValueError, match="power-of-2"):
        coders.hadamard(48)
