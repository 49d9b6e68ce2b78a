"""Front ends outside this package's own engine: :mod:`kvi_engine.integrations.vllm` (capsule KV through vLLM's
KV-connector API)."""
