"""The dense encoder a pipeline runs, by name: the retrieval layer's MiniLM or a KPR model directory."""
from __future__ import annotations

from kvi_engine.retrieval.encoder import default_encoder


def make_encoder(spec: str = "minilm"):
    """``minilm`` (all-MiniLM-L6-v2, offline) or ``kpr:DIR`` (a KPR model directory): the dense retriever of RAG /
    KV Prefix and the embedding half of DRM."""
    if spec == "minilm":
        return default_encoder()
    if spec.startswith("kpr:") and spec[4:]:
        from kvi_engine.kpr.encoder import KPREncoder
        return KPREncoder(spec[4:])
    raise ValueError(f"unknown retriever {spec!r}; expected 'minilm' or 'kpr:DIR'")
