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
