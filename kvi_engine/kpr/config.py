"""KPRConfig: a BERT-family encoder (its config nested as a dict) plus the entity fusion layer's shape."""
from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from kvi_engine.retrieval.encoder import POOLINGS

FUSION_ATTENTIONS = ("sigmoid", "softmax")


class KPRConfig(PreTrainedConfig):
    model_type = "kpr"
    encoder: dict | None = None
    entity_dim: int = 384
    fusion_heads: int = 1
    fusion_attention: str = "sigmoid"
    fusion_dropout: float = 0.0
    pooling: str = "mean"
    normalize: bool = True
    max_entities: int = 32
    max_mention_length: int = 16
    min_prior: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoder is None:
            raise ValueError("KPRConfig needs `encoder`: the base encoder's config as a dict (e.g. BertConfig().to_dict())")
        if "model_type" not in self.encoder:
            raise ValueError("KPRConfig.encoder must name its `model_type` (e.g. 'bert')")
        if self.fusion_attention not in FUSION_ATTENTIONS:
            raise ValueError(f"fusion_attention must be one of {FUSION_ATTENTIONS}, got {self.fusion_attention!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("entity_dim", "fusion_heads", "max_entities", "max_mention_length"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.fusion_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not divisible by fusion_heads={self.fusion_heads}")
        self.auto_map = {"AutoConfig": "configuration_kpr.KPRConfig", "AutoModel": "modeling_kpr.KPRModel"}

    def encoder_config(self) -> PreTrainedConfig:
        enc = dict(self.encoder)
        return AutoConfig.for_model(enc.pop("model_type"), **enc)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder["hidden_size"])

    @property
    def max_position_embeddings(self) -> int:
        return int(self.encoder.get("max_position_embeddings", 512))
