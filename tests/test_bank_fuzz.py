"""Fuzz: thousands of truncated, bit-flipped, overwritten and forged (checksums recomputed) bank files, a few hundred
of each flavour (fp16 without a prefix, fp16 with a BOS prefix, int4, int8:channel, a multi-segment int8 bank with a
manifest and a tombstone). Each one either raises BankFormatError naming the file, or verifies and then reads back
consistently: every live capsule's tokens, record and KV at every layer, the C++ and PyTorch decoders agreeing.
Never another exception, never a crash. Seeded."""
import random
import shutil

import numpy as np
import pytest
import torch

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.formats.container import BankFormatError
from kvi_engine.testing.forge import forge, read_header
from kvi_engine.testing.synth_bank import create_tagged_bank, tagged_capsules

RANDOM_CASES = 1200
FORGED_CASES = 1000


def exercise(root):
    bank = KVBank.open(root)
    bank.verify()
    for i in bank.live_ids():
        bank.capsule(i), bank.token_ids(i), bank.statement(i)
        start, n = bank.ranges[i].tolist()
        assert len(bank.token_ids(i)) == n >= 1
        idx = torch.arange(start, start + n)
        for layer in range(bank.num_layers):
            k, _ = bank.gather_kv(layer, idx)
            if bank.spec.quantised:
                assert torch.equal(k, bank.gather_kv(layer, idx, backend="reference")[0])
    bank.describe()


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    flavours = [create_tagged_bank(base / "fp16", list(range(5)), "fp16", prefix_len=0),
                create_tagged_bank(base / "bos", list(range(5)), "fp16", prefix_len=1),
                create_tagged_bank(base / "int4", list(range(5)), "int4"),
                create_tagged_bank(base / "int8ch", list(range(5)), "int8:channel")]
    multi = create_tagged_bank(base / "multi", list(range(4)), "int8")
    meta, tids, k, v = tagged_capsules([7, 8])
    bank_updates.add_kv(multi, meta, tids, k, v)
    bank_updates.remove(multi, [1])
    for b in (*flavours, multi):
        exercise(b)
    return [*flavours, multi]


def files_of(root):
    return sorted(p for p in root.iterdir() if p.suffix == ".kvb")


def fresh_victim(rng, banks, root):
    """A fresh copy of a random bank at ``root`` and one of its files, chosen at random, to damage."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(rng.choice(banks), root)
    return rng.choice(files_of(root))


def check(root, what):
    try:
        exercise(root)
    except BankFormatError as e:
        assert str(root) in str(e), f"{what}: error does not name the file: {e}"
    except Exception as e:  # noqa: BLE001 -- the point: nothing else may escape
        pytest.fail(f"{what}: {type(e).__name__}: {e}")


def test_random_truncations_flips_and_overwrites(banks, tmp_path):
    rng = random.Random(0)
    raised = 0
    for case in range(RANDOM_CASES):
        root = tmp_path / f"c{case % 8}"
        victim = fresh_victim(rng, banks, root)
        data = bytearray(victim.read_bytes())
        kind = rng.choice(["truncate", "flip", "flip", "overwrite", "zero_tail"])
        if kind == "truncate":
            data = data[:rng.randrange(len(data))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            at = rng.randrange(len(data))
            data[at:at + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
        else:
            at = rng.randrange(len(data))
            data[at:] = bytes(len(data) - at)
        victim.write_bytes(bytes(data))
        try:
            exercise(root)
        except BankFormatError as e:
            raised += 1
            assert victim.name in str(e) or str(root) in str(e), f"{kind} of {victim.name}: unnamed file: {e}"
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"case {case}: {kind} of {victim.name}: {type(e).__name__}: {e}")
    assert raised > RANDOM_CASES * 0.8  # nearly every mutation is caught (the rest hit alignment padding)


def _mutate_value(rng, v):
    choices = [-1, 0, 1, 2 ** 40, -(2 ** 31), "x", None, [], {}, 3.5, [1, 2], b"\x00"]
    if isinstance(v, int) and not isinstance(v, bool):
        choices += [v + 1, v - 1, v * 2]
    return rng.choice(choices)


def _walk(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, path + (k,))
    elif isinstance(obj, list) and obj and len(obj) < 16:
        for i, v in enumerate(obj):
            yield from _walk(v, path + (i,))
    yield path


def test_forged_headers_and_tables_with_valid_checksums(banks, tmp_path):
    rng = random.Random(1)
    for case in range(FORGED_CASES):
        root = tmp_path / f"f{case % 8}"
        victim = fresh_victim(rng, banks, root)
        raw = victim.read_bytes()
        header = read_header(victim)
        tables = [n for n in ("capsule_table", "token_ids", "capsule_meta", "capsule_ids", "capsule_segment",
                              "capsule_row", "k_scale", "prefix_token_ids") if n in header["sections"]]
        if rng.random() < 0.5:
            paths = [p for p in _walk(header) if p]
            p = rng.choice(paths)
            node = header
            for key in p[:-1]:
                node = node[key]
            node[p[-1]] = _mutate_value(rng, node[p[-1]])
            what = f"header field {'/'.join(map(str, p))} of {victim.name}"
            forge(victim, header)
        else:
            name = rng.choice(tables)
            s = header["sections"][name]
            data = bytearray(raw[s["offset"]:s["offset"] + s["nbytes"]])
            if data:
                if s["dtype"] in ("int64", "int32"):
                    arr = np.frombuffer(data, s["dtype"]).copy()
                    arr[rng.randrange(arr.size)] = rng.choice([-1, -(2 ** 31), 2 ** 31 - 1, arr.max() + 1, 0])
                    data = bytearray(arr.tobytes())
                else:
                    at = rng.randrange(len(data))
                    data[at] ^= 1 << rng.randrange(8)
            what = f"section {name} of {victim.name}"
            forge(victim, header, {name: data})
        check(root, what)
