"""Model loading without a network: the hub is probed once (bounded), a default model that cannot be fetched falls
back within seconds, a named one never does."""
import time

import pytest

from kvi_engine.models import loading


@pytest.fixture()
def fresh_probe():
    loading.hub_reachable.cache_clear()
    yield
    loading.hub_reachable.cache_clear()


def test_unreachable_hub_falls_back_in_seconds(monkeypatch, capsys, fresh_probe):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # TEST-NET-1 (RFC 5737): never routed, so a connect hangs until the probe's timeout -- the worst case
    monkeypatch.setenv("HF_ENDPOINT", "https://192.0.2.1")
    t0 = time.perf_counter()
    model, tok, fallback = loading.load_model(None)
    elapsed = time.perf_counter() - t0
    assert fallback and "FALLING BACK" in capsys.readouterr().err
    assert elapsed < 5, f"fallback took {elapsed:.1f} s"
    assert not loading.hub_reachable()  # probed once per process, the answer kept


def test_offline_flag_skips_the_probe(monkeypatch, fresh_probe):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "https://192.0.2.1")
    t0 = time.perf_counter()
    assert not loading.hub_reachable(timeout=30)
    assert time.perf_counter() - t0 < 0.5
