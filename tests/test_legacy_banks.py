"""Banks written before the one-container restructure (container version 1, ``tests/data/legacy_v1/SOURCE.md``)
open, verify, read the same KV as a bank written today, and take updates -- users keep the banks they compiled."""
import shutil
from pathlib import Path

import pytest
import torch

from kvi_engine.bank import updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.formats.container import LEGACY_MAGIC
from kvi_engine.testing.synth_bank import DIMS, create_tagged_bank, read_tagged, tagged_capsules

DATA = Path(__file__).parent / "data" / "legacy_v1"


@pytest.fixture()
def legacy(tmp_path):
    shutil.copytree(DATA, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_fixtures_are_version_1():
    files = sorted(DATA.rglob("*.kvb"))
    assert len(files) == 4 and all(f.read_bytes()[:8] == LEGACY_MAGIC for f in files)


def test_a_version_1_bank_opens_verifies_and_reads_its_tags(legacy):
    bank = KVBank.open(legacy / "v1-fp16", verify=True)
    assert read_tagged(bank) == {0: 0, 1: 1, 2: 2}


def test_a_version_1_manifest_reads_like_a_bank_written_today(legacy, tmp_path):
    old = KVBank.open(legacy / "v1-int4-manifest", verify=True)
    assert old.live_ids() == [0, 2, 3, 4, 5] and len(old.segments) == 2
    assert old.describe()["container_versions"] == [1]
    with pytest.raises(KeyError, match="removed"):
        old.token_ids(1)
    new = KVBank.open(create_tagged_bank(tmp_path / "new", [0, 1, 2, 3, 4, 5], "int4:g8"))
    for i in old.live_ids():
        a, b = old.ranges[i].tolist(), new.ranges[i].tolist()
        assert a[1] == b[1] and old.token_ids(i) == new.token_ids(i)
        for layer in range(old.num_layers):
            ko, vo = old.gather_kv(layer, torch.arange(a[0], a[0] + a[1]))
            kn, vn = new.gather_kv(layer, torch.arange(b[0], b[0] + b[1]))
            assert torch.equal(ko, kn) and torch.equal(vo, vn), (i, layer)  # same codes, same decoder


def test_a_version_1_bank_takes_updates(legacy):
    root = legacy / "v1-int4-manifest"
    before = read_tagged(KVBank.open(root), atol=0.2)
    meta, ids, k, v = tagged_capsules([6], DIMS)
    (added,) = updates.add_kv(root, meta, ids, k, v)
    updates.remove(root, [0])
    bank = KVBank.open(root, verify=True)
    assert added == 6 and bank.live_ids() == [2, 3, 4, 5, 6]
    assert read_tagged(bank, atol=0.2) == {**{i: t for i, t in before.items() if i != 0}, 6: 6}
    kv = {i: kv_of(bank, i) for i in bank.live_ids()}
    updates.compact(root)  # rewrites every live capsule into one current-version segment, bytes copied
    bank = KVBank.open(root, verify=True)
    assert len(bank.segments) == 1 and bank.segments[0].path.read_bytes()[:8] != LEGACY_MAGIC
    assert bank.live_ids() == [2, 3, 4, 5, 6]
    for i, (k, v) in kv.items():
        k2, v2 = kv_of(bank, i)
        assert torch.equal(k, k2) and torch.equal(v, v2), i


def kv_of(bank, i):
    start, n = bank.ranges[i].tolist()
    return tuple(torch.stack(t) for t in zip(*(bank.gather_kv(layer, torch.arange(start, start + n))
                                               for layer in range(bank.num_layers))))
