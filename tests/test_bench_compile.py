"""The arithmetic of the 10M-capsule estimate of ``kvi bench compile``, against numbers worked out by hand."""
import pytest

from kvi_engine.benchmarks.compile import estimate, estimate_table


def test_estimate_by_hand():
    values_05b = 24 * 2 * 64 * 2 * 14                    # K and V values of a 14-token capsule of Qwen2.5-0.5B
    store = {q: {"capsules_per_s": r, "kv_bytes_per_capsule": values_05b * 2, "mb_per_s": 1.0}
             for q, r in (("fp16", 300.0), ("int8", 150.0), ("int4", 30.0))}
    est = estimate(store, cpu_capsules_per_s=20.0, cpu_params=100e6, cpu_tokens=7.0, n=10_000_000)
    small, big = est["rows"]
    assert small["forward_capsules_per_s"] == pytest.approx(200e12 / (2 * 494e6 * 17))   # ~11,908
    assert small["store_capsules_per_s"] == pytest.approx(300.0)      # same shapes as measured: the measured rate
    assert small["capsules_per_s_per_worker"] == pytest.approx(300.0) and small["bound"] == "store"
    assert small["hours_8_workers"] == pytest.approx(10e6 / 300 / 8 / 3600)
    assert small["capsules_per_s_per_worker_int4"] == pytest.approx(30.0)
    assert small["bank_gb_fp16"] == pytest.approx(10e6 * values_05b * 2 / 1e9)         # 1,720 GB
    values_7b = 28 * 4 * 128 * 2 * 14
    assert big["store_capsules_per_s"] == pytest.approx(300.0 * values_05b / values_7b)
    assert big["forward_only_hours_1_workers"] == pytest.approx(10e6 / (400e12 / (2 * 7.6e9 * 17)) / 3600)
    assert est["cpu_achieved_gflops"] == pytest.approx(2 * 100e6 * 7 * 20 / 1e9)
    assert est["cpu_core_hours"] == pytest.approx(10e6 / 20 / 3600)
    table = estimate_table(est)
    assert "| Qwen2.5-0.5B | 300 capsules/s (11,908 / 300) | 9.3 h | 1.2 h | 9 min |" in table
