"""DeviceKVCache: pool contents equal the bank's KV, LRU order and eviction, coalesced loads, capacity errors."""
import pytest
import torch

from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.residency import DeviceKVCache
from kvi_engine.testing.synth_bank import create_tagged_bank

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def bank_kv(bank, layer, ids):
    idx = torch.cat([torch.arange(s, s + n) for s, n in bank.ranges[ids].tolist()])
    return bank.gather_kv(layer, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant", ["fp16", "int4:g8"])
def test_cache_serves_bank_kv_with_lru_eviction(tmp_path, device, quant):
    bank = KVBank.open(create_tagged_bank(tmp_path / "b", list(range(12)), quant))
    lengths = bank.ranges[:, 1].tolist()  # 2..6 tokens: one block of 8 each
    cache = DeviceKVCache(bank, device, capacity_tokens=4 * 8, block=8, dtype=torch.float32)
    for layer in range(bank.num_layers):
        k, v = cache.gather(layer, [3, 0, 5])
        wk, wv = bank_kv(bank, layer, [3, 0, 5])
        assert k.device.type == device and torch.equal(k.cpu(), wk.float()) and torch.equal(v.cpu(), wv.float())
    assert cache.stats.misses == 3 and cache.stats.hits == 3 * (bank.num_layers - 1)
    assert cache.stats.bytes_to_device == 2 * bank.num_layers * sum(lengths[c] for c in (3, 0, 5)) * 2 * 16 * 4
    cache.fetch([0])          # 0 becomes most recent: LRU order 3, 5, 0
    cache.fetch([7, 8])       # needs 2 blocks, 1 free: evicts 3
    assert cache.resident == [5, 0, 7, 8] and cache.stats.evictions == 1
    k, _ = cache.gather(1, [8, 5])
    assert torch.equal(k.cpu(), bank_kv(bank, 1, [8, 5])[0].float())
    with pytest.raises(ValueError, match="blocks"):
        cache.fetch([1, 2, 4, 6, 9])
    with pytest.raises(IndexError):
        cache.fetch([12])
    # after a failed fetch the resident capsules are still served correctly
    k, _ = cache.gather(0, [7])
    assert torch.equal(k.cpu(), bank_kv(bank, 0, [7])[0].float())


def stored(bank, name, layer, ids):
    """The bank's stored bytes of section ``name`` for capsules ``ids`` (token rows, or capsule rows for
    per-capsule key params), read through the segments -- the independent side of the storage-form checks."""
    from kvi_engine.bank.spec import capsule_axis

    snap = bank.snapshot
    seg_of, row_of = snap.locations
    out = []
    for c in ids:
        seg = snap.segments[int(seg_of[c])]
        a, n = seg.table[int(row_of[c])]
        arr = seg.c.array(name)[layer]
        out.append(arr[int(row_of[c])][None] if capsule_axis(bank.spec, name) else arr[a:a + n])
    import numpy as np
    return np.concatenate(out)


def pool_rows(cache, name, layer, ids):
    """The same rows read back from the pool (token slots, or the capsule's first-block row)."""
    from kvi_engine.bank.spec import capsule_axis

    where = cache.place(ids)
    pool = cache.pool[name][layer]
    rows = [pool[torch.tensor([where[c][1]])] if capsule_axis(cache.bank.spec, name) else pool[where[c][0]]
            for c in ids]
    x = torch.cat(rows).cpu()
    return (x.view(torch.uint16) if x.dtype == torch.bfloat16 else x).numpy()


@pytest.mark.parametrize("quant", ["fp16", "int8", "int4:g8", "int4:g8:channel"])
def test_storage_form_holds_the_bank_bytes_and_decodes_like_the_bank(tmp_path, quant):
    import numpy as np

    from kvi_engine.bank.spec import kv_sections

    bank = KVBank.open(create_tagged_bank(tmp_path / "b", list(range(10)), quant))
    cache = DeviceKVCache(bank, "cpu", capacity_tokens=4 * 8, block=8, dtype=None)
    ids = [4, 1, 7]
    for layer in range(bank.num_layers):
        for name in kv_sections(bank.spec):
            assert np.array_equal(pool_rows(cache, name, layer, ids), stored(bank, name, layer, ids)), name
        k, v = cache.gather(layer, ids)
        wk, wv = bank_kv(bank, layer, ids)
        torch.testing.assert_close(k, wk.float(), atol=0, rtol=0)
        torch.testing.assert_close(v, wv.float(), atol=0, rtol=0)
    assert cache.stats.misses == 3  # one residency change per gather: no double counting
    assert cache.stats.hits == 3 * bank.num_layers * (len(kv_sections(bank.spec)) + 1) - 3  # place/gather calls
    cache.fetch([0, 2, 3])  # evicts the least recent: pool slots are reused by other capsules
    assert cache.stats.evictions >= 1
    for name in kv_sections(bank.spec):
        assert np.array_equal(pool_rows(cache, name, 1, [0, 2, 3]), stored(bank, name, 1, [0, 2, 3])), name


def test_a_failed_load_registers_nothing(tmp_path, monkeypatch):
    bank = KVBank.open(create_tagged_bank(tmp_path / "b", list(range(10)), "int8"))
    cache = DeviceKVCache(bank, "cpu", capacity_tokens=4 * 8, block=8, dtype=None)
    cache.fetch([0, 1])
    free = sorted(cache._free)

    def broken(placed):
        raise OSError("device transfer failed")
    monkeypatch.setattr(cache, "_load_stored", broken)
    with pytest.raises(OSError, match="transfer"):
        cache.fetch([2, 3])
    assert cache.resident == [0, 1] and sorted(cache._free) == free
    monkeypatch.undo()
    k, _ = cache.gather(0, [2, 0])
    assert torch.equal(k, bank_kv(bank, 0, [2, 0])[0].float())


def test_pool_tables_rebuild_after_an_eviction_moves_the_plan_capsules(tmp_path):
    """A plan's tables over the pool must point at its capsules' current slots, even after another plan's fetch
    evicted them and they came back elsewhere."""
    import numpy as np

    from kvi_engine.compile.compiler import compile_bank
    from kvi_engine.plan.plan import build_plan
    from kvi_engine.plan.tables import pool_tables
    from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer

    bank = compile_bank(model("llama", True), tokenizer(True), CAPSULES, tmp_path / "b", quant="int8",
                        entities=ENTITIES, progress=False)
    blocks = lambda ids: sum(-(-int(bank.ranges[c, 1]) // 8) for c in ids)  # noqa: E731
    cache = DeviceKVCache(bank, "cpu", capacity_tokens=8 * blocks([0, 1, 2]), block=8, dtype=None)
    plan_a, plan_b = build_plan(bank, [[5, 6], [6]]), build_plan(bank, [[0, 1, 2]])
    def check(plan):
        t = pool_tables(plan, cache)
        for r, row in enumerate(plan.capsule_ids):
            slots = t.token[r, plan.prefix_len:plan.prefix_len + sum(int(bank.ranges[c, 1]) for c in row)]
            got = cache.pool["k"][0][slots.long()].numpy()
            assert np.array_equal(got, stored(bank, "k", 0, list(row)))
    check(plan_a)
    first = pool_tables(plan_a, cache)
    assert pool_tables(plan_a, cache) is first  # cached while nothing was evicted
    check(plan_b)                               # evicts 5 and 6 (room for three capsules)
    assert 5 not in cache.resident
    check(plan_a)                               # rebuilt: 5 and 6 resident again, at new slots
    assert pool_tables(plan_a, cache) is not first and len([k for k in plan_a._cache if k[0] == "pool_tables"]) == 1
