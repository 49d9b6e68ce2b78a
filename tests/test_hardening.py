"""Regression tests of the hardening issue: forged banks that verify used to pass, CLI user errors that ended in a
traceback (each must be one line naming what is at fault, exit 2), a committed update reported as a failure, and
unbounded prompts. Every case here failed before the fix."""
import json
import os
import time

import numpy as np
import pytest

from kvi_engine.bank import updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.capsules.capsule import save_capsules, save_entities
from kvi_engine.cli.main import main
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.formats.container import FormatError
from kvi_engine.generate.engine import KVIEngine
from kvi_engine.generate.inject import inject
from kvi_engine.testing.forge import forge, read_header
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer
from kvi_engine.testing.synth_bank import create_tagged_bank


@pytest.fixture()
def bank_dir(tmp_path):
    return create_tagged_bank(tmp_path / "bank", [0, 1, 2, 3], "int8")


def section_bytes(path, name):
    h = read_header(path)
    s = h["sections"][name]
    return h, bytearray(path.read_bytes()[s["offset"]:s["offset"] + s["nbytes"]])


# -- 2. forged files that verify passed ------------------------------------------------------------------------------

def test_table_row_whose_end_wraps_int64_is_refused(bank_dir):
    seg = bank_dir / "bank.kvb"
    h, data = section_bytes(seg, "capsule_table")
    table = np.frombuffer(data, np.int64).reshape(-1, 2).copy()
    table[-1] = (2**62, 2**62)  # start + length wraps to a negative int64
    forge(seg, h, {"capsule_table": table.tobytes()})
    with pytest.raises(FormatError, match="capsule_table"):
        KVBank.open(bank_dir).verify()
    with pytest.raises(FormatError, match="capsule_table"):
        KVBank.open(bank_dir).token_ids(3)  # not a silent []


def overlap_table(seg):
    h, data = section_bytes(seg, "capsule_table")
    table = np.frombuffer(data, np.int64).reshape(-1, 2).copy()
    table[1, 0] = table[0, 0] + 1  # in range, sorted, but capsule 1 starts inside capsule 0
    forge(seg, h, {"capsule_table": table.tobytes()})


def test_overlapping_table_rows_are_refused(bank_dir):
    overlap_table(bank_dir / "bank.kvb")
    with pytest.raises(FormatError, match="overlapping"):
        KVBank.open(bank_dir).verify()


def test_verify_reads_the_tables_of_a_segment_whose_capsules_were_all_removed(bank_dir):
    updates.remove(bank_dir, [0, 1, 2, 3])
    KVBank.open(bank_dir).verify()
    overlap_table(bank_dir / "bank.kvb")  # no live capsule reads this table any more; compact still would
    with pytest.raises(FormatError, match="capsule_table"):
        KVBank.open(bank_dir).verify()


def test_huge_counts_over_empty_sections_are_refused(bank_dir):
    seg = bank_dir / "bank.kvb"
    h = read_header(seg)
    h["num_tokens"] = 2**62
    for name in ("k", "v", "k_scale", "v_scale", "token_ids"):
        shape = h["sections"][name]["shape"]
        h["sections"][name]["shape"] = [2**62 if d == read_header(seg)["num_tokens"] else d for d in shape]
    forge(seg, h)
    with pytest.raises(FormatError, match="inconsistent extent or shape|expected"):
        KVBank.open(bank_dir)


def test_record_without_subject_is_refused(bank_dir):
    import msgpack
    seg = bank_dir / "bank.kvb"
    h, data = section_bytes(seg, "capsule_meta")
    meta = msgpack.unpackb(bytes(data), raw=False)
    del meta[2]["subject"]
    blob = msgpack.packb(meta, use_bin_type=True)
    h["sections"]["capsule_meta"]["nbytes"] = len(blob)
    h["sections"]["capsule_meta"]["shape"] = [len(blob)]
    raw = bytearray(seg.read_bytes())
    off = len(raw) + (-len(raw)) % 64  # the new record table goes at the end, its section entry points there
    raw += bytes(off - len(raw)) + blob
    seg.write_bytes(bytes(raw))
    h["sections"]["capsule_meta"]["offset"] = off
    forge(seg, h, {"capsule_meta": blob})
    with pytest.raises(FormatError, match="record 2 lacks a non-empty string 'subject'"):
        KVBank.open(bank_dir).verify()


@pytest.mark.parametrize("version", [0, 3, 2**31])
def test_unsupported_container_versions_are_refused(bank_dir, version):
    seg = bank_dir / "bank.kvb"
    forge(seg, read_header(seg), version=version)
    with pytest.raises(FormatError, match="version"):
        KVBank.open(bank_dir)


def test_symlinked_segment_is_refused_without_reading_it(bank_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOPSECRET-PASSWORD-1234" * 4)
    updates.remove(bank_dir, [1])  # a manifest names the segments now
    name = next(p.name for p in bank_dir.iterdir() if p.name.startswith("seg-") or p.name == "bank.kvb")
    (bank_dir / name).unlink()
    os.symlink(secret, bank_dir / name)
    with pytest.raises(FormatError, match="symlink") as e:
        KVBank.open(bank_dir)
    assert "TOPSECRET" not in str(e.value)
    foreign = tmp_path / "foreign.kvb"
    foreign.write_bytes(b"TOPSECRET" * 16)
    with pytest.raises(FormatError) as e:  # any non-bank file: its bytes are never echoed
        KVBank.open(foreign)
    assert "TOPSECRET" not in str(e.value)


# -- 3. CLI user errors: one line, exit 2, naming what is at fault ---------------------------------------------------

@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model("qwen2", True).save_pretrained(d / "model")
    tokenizer(True).save_pretrained(d / "model")
    save_capsules(CAPSULES, d / "c.jsonl")
    save_entities(ENTITIES, d / "e.jsonl")
    assert main(["compile", "--capsules", str(d / "c.jsonl"), "--entities", str(d / "e.jsonl"), "--model",
                 str(d / "model"), "--out", str(d / "bank"), "--quant", "fp32"]) == 0
    assert main(["bank", "remove", str(d / "bank"), "--ids", "1"]) == 0
    (d / "deep.jsonl").write_text('{"subject": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (d / "latin1.jsonl").write_bytes('{"subject": "Caf\u00e9", "relation": "r", "object": "x"}\n'.encode("latin-1"))
    (d / "tpl_unknown.json").write_text(json.dumps({"causes": "{subject} causes {objekt}."}))
    (d / "tpl_broken.json").write_text('{"causes": ')
    return d


def _cases(d):
    model_args = ["--model", str(d / "model")]
    bank = str(d / "bank")
    return [  # (argv, what the one line must name)
        (["bank", "remove", bank, "--ids", "1"], "already removed"),
        (["ask", "--bank", bank, "-q", "x?", "--capsules", "1", *model_args], "capsule 1 was removed"),
        (["bank", "recompile", bank, "--entity", "Nobody", *model_args], "'Nobody'"),
        (["bank", "remove", bank, "--ids", str(2**70)], "out of range"),
        (["compile", "--capsules", str(d / "deep.jsonl"), "--out", str(d / "x"), *model_args],
         "deep.jsonl:1: JSON nested deeper"),
        (["compile", "--capsules", str(d / "latin1.jsonl"), "--out", str(d / "x"), *model_args],
         "latin1.jsonl:1: not UTF-8"),
        (["compile", "--capsules", str(d / "c.jsonl"), "--templates", str(d / "tpl_unknown.json"), "--out",
          str(d / "x"), *model_args], "tpl_unknown.json: template for 'causes' names unknown field(s) ['objekt']"),
        (["compile", "--capsules", str(d / "c.jsonl"), "--templates", str(d / "tpl_broken.json"), "--out",
          str(d / "x"), *model_args], "tpl_broken.json: not a JSON templates file"),
        (["ask", "--bank", bank, "-q", "why? " * 25_000, "--no-compare", *model_args], "max_prompt_tokens"),
    ]


def test_every_user_error_is_one_line_exit_2(cli_env, capsys):
    for argv, needle in _cases(cli_env):
        t0 = time.perf_counter()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse rejects a bad value itself: also one line, also exit 2
            code = e.code
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "it/s]" not in ln]  # no bars
        what = f"kvi {' '.join(argv)[:80]}"
        assert code == 2, f"{what}: exit {code}"
        assert err and needle in err[-1], f"{what}: {err[-3:]}"
        assert sum(not line.startswith("usage:") and "warning" not in line for line in err) == 1, f"{what}: {err}"
        assert time.perf_counter() - t0 < 60, f"{what} took {time.perf_counter() - t0:.0f} s"


def test_inspect_lists_removed_capsules_instead_of_failing(cli_env, capsys):
    assert main(["bank", "inspect", str(cli_env / "bank"), "--capsules", "3"]) == 0
    assert "[1] (removed)" in capsys.readouterr().out


def test_manifest_that_is_a_directory_is_named(tmp_path, capsys):
    root = create_tagged_bank(tmp_path / "b", [0, 1], "fp16")
    (root / "MANIFEST.kvb").mkdir()
    assert main(["bank", "verify", str(root)]) == 2
    err = capsys.readouterr().err
    assert "MANIFEST.kvb: not a regular file" in err and "kept changing" not in err


# -- 4. a committed update is reported as what it is ----------------------------------------------------------------

def test_update_commits_despite_a_directory_named_like_a_segment(tmp_path, capsys):
    root = create_tagged_bank(tmp_path / "b", [0, 1, 2], "fp16")
    (root / "seg-000009-deadbeef0000.kvb").mkdir()
    assert main(["bank", "remove", str(root), "--ids", "1"]) == 0
    out, err = capsys.readouterr()
    assert "removed capsules [1]" in out and "update committed" in err and "a directory" in err
    assert KVBank.open(root).live_ids() == [0, 2]
    assert main(["bank", "remove", str(root), "--ids", "2"]) == 0  # every later update works too
    assert KVBank.open(root, verify=True).live_ids() == [0]


# -- 5. prompts are bounded before any forward pass ------------------------------------------------------------------

def test_overlong_prompts_fail_fast_with_a_clear_error(tmp_path):
    m, tok = model("qwen2", True), tokenizer(True)
    bank = compile_bank(m, tok, CAPSULES, tmp_path / "bank", quant="fp32", progress=False)
    engine = KVIEngine(m, tok, bank, max_prompt_tokens=64)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="prompt 1 has .* tokens, more than max_prompt_tokens = 64"):
        engine.generate(["short?", "long " * 200], [[0], [1]], max_new_tokens=2)
    with pytest.raises(ValueError, match="exceed the model's 4,096 positions"):
        KVIEngine(m, tok, bank, max_prompt_tokens=10**6).generate(["x " * 2040], [[0, 1, 2]], max_new_tokens=8)
    assert time.perf_counter() - t0 < 10
    ids = __import__("torch").tensor([tok("x " * 4095, add_special_tokens=False).input_ids[:4095]])
    with pytest.raises(ValueError, match="past the model's 4096 positions"), inject(m, bank, [[0, 1]]):
        m(input_ids=ids)


def test_position_limit_is_exact_and_follows_the_layout(tmp_path):
    m, tok = model("qwen2", True), tokenizer(True)
    bank = compile_bank(m, tok, CAPSULES, tmp_path / "bank", quant="fp32", progress=False)
    p, lens = bank.prefix_len, bank.ranges[:, 1].tolist()
    for layout, start in (("stacked", p + lens[0] + lens[4]), ("parallel", p + max(lens[0], lens[4]))):
        engine = KVIEngine(m, tok, bank, layout=layout)
        n = int(engine.encode(["Where is Oslo?"], strip_prefix=True)[1].sum())
        engine.max_positions = start + n + 3 - 1  # 3 new tokens: positions up to start + n + 1 are used
        out = engine.generate(["Where is Oslo?"], [[0, 4]], max_new_tokens=3, min_new_tokens=3)
        assert len(out.token_ids[0]) <= 3
        engine.max_positions -= 1
        with pytest.raises(ValueError, match=f"row 0: {start} injected"):
            engine.generate(["Where is Oslo?"], [[0, 4]], max_new_tokens=3)


def test_foreign_warnings_do_not_hang_the_cli_and_keep_their_form(tmp_path, monkeypatch, capsys):
    import warnings

    root = create_tagged_bank(tmp_path / "b", [0, 1], "fp16")
    real = KVBank.open

    def noisy(*a, **kw):
        warnings.warn("a library changes its API", FutureWarning)
        return real(*a, **kw)

    monkeypatch.setattr(KVBank, "open", staticmethod(noisy))
    t0 = time.perf_counter()
    with pytest.warns(FutureWarning, match="a library changes its API"):  # handed on as it came, not swallowed
        assert main(["bank", "inspect", str(root)]) == 0
    assert time.perf_counter() - t0 < 30 and "warning" not in capsys.readouterr().err


def test_banks_the_user_names_through_a_symlink_open(tmp_path):
    root = create_tagged_bank(tmp_path / "b", [0, 1, 2], "fp16")
    os.symlink(root, tmp_path / "link")
    os.symlink(root / "bank.kvb", tmp_path / "file.kvb")
    assert KVBank.open(tmp_path / "link").live_ids() == [0, 1, 2]
    assert KVBank.open(tmp_path / "file.kvb", verify=True).live_ids() == [0, 1, 2]
    updates.remove(tmp_path / "link", [1])  # through the link too: the segments inside are regular files
    assert KVBank.open(root).live_ids() == [0, 2]


def test_jsonl_line_limit_reads_no_more_than_the_limit(tmp_path, monkeypatch):
    from kvi_engine.utils.jsonl import read_jsonl

    monkeypatch.setenv("KVI_JSONL_MAX_LINE_BYTES", "64")
    ok = '{"subject": "' + "a" * 49 + '"}'  # 64 bytes before the newline: at the limit, accepted
    (tmp_path / "x.jsonl").write_text(ok + "\n" + '{"subject": "' + "b" * 60 + '"}\n')
    rows = read_jsonl(tmp_path / "x.jsonl")
    assert next(rows)[0] == 1
    with pytest.raises(ValueError, match=r"x.jsonl:2: line longer than the limit of 64 bytes"):
        next(rows)


def test_a_segment_write_that_fails_at_close_leaves_no_file(tmp_path):
    from kvi_engine.bank.spec import QuantSpec
    from kvi_engine.testing.synth_bank import DIMS, _writer, tagged_capsules

    meta, token_ids, k, v = tagged_capsules([0, 1], DIMS)
    w = _writer(tmp_path / "seg.kvb", QuantSpec.parse("int8"), [len(t) for t in token_ids],
                np.concatenate([np.asarray(t, np.int32) for t in token_ids]), meta, DIMS)
    for layer in range(DIMS["num_layers"]):
        w.put(layer, np.arange(2), k[layer], v[layer])
    w.header["sections"] = {}  # a field the container owns: the header write refuses it
    with pytest.raises(ValueError, match="container's own"):
        w.close()
    assert list(tmp_path.iterdir()) == []  # neither the segment nor its temporary file
