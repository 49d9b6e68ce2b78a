"""KPRModel: a BERT-family encoder whose pooled text vector is fused with the vectors of linked entities."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from kvi_engine.kpr.config import KPRConfig
from kvi_engine.kpr.fusion import EntityFusion


@dataclass
class KPROutput(ModelOutput):
    """``sentence_embedding`` [B, H]: the fused (and, if configured, L2-normalised) text embedding;
    ``pooled`` [B, H]: the encoder's pooled vector before fusion; ``last_hidden_state`` [B, T, H]."""
    sentence_embedding: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class KPRModel(PreTrainedModel):
    config_class = KPRConfig
    base_model_prefix = "kpr"
    main_input_name = "input_ids"

    def __init__(self, config: KPRConfig):
        super().__init__(config)
        enc_cfg = config.encoder_config()
        self.encoder = AutoModel.from_config(enc_cfg)
        self.fusion = EntityFusion(config.hidden_size, config.entity_dim, config.max_position_embeddings,
                                   num_heads=config.fusion_heads, attention=config.fusion_attention,
                                   dropout=config.fusion_dropout,
                                   layer_norm_eps=float(getattr(enc_cfg, "layer_norm_eps", 1e-12)))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, EntityFusion):
            init.normal_(module.noop, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.o_proj.weight)
            init.zeros_(module.o_proj.bias)

    @classmethod
    def from_base(cls, base: str | os.PathLike, entity_dim: int, **fusion_kwargs) -> "KPRModel":
        """A KPR model around the pretrained encoder at ``base`` (a directory or hub name) with a fresh fusion layer
        whose span position embeddings start as the encoder's own."""
        encoder = AutoModel.from_pretrained(str(base))
        config = KPRConfig(encoder=encoder.config.to_dict(), entity_dim=entity_dim, **fusion_kwargs)
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        pos = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
        if pos is not None and pos.weight.shape == model.fusion.position_embeddings.weight.shape:
            with torch.no_grad():
                model.fusion.position_embeddings.weight.copy_(pos.weight)
        return model.eval()

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, entity_embeds: torch.Tensor | None = None,
                entity_position_ids: torch.Tensor | None = None, entity_attention_mask: torch.Tensor | None = None,
                entity_ids: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs) -> KPROutput:
        """``input_ids``/``attention_mask`` [B, T]; ``entity_embeds`` [B, E, De] (from the tokenizer's table lookup),
        ``entity_position_ids`` [B, E, M] (-1 = padding), ``entity_attention_mask`` [B, E]. ``entity_ids`` is
        accepted for bookkeeping only: the vectors, not the ids, carry the knowledge."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        enc_kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **enc_kwargs).last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        fused = self.fuse(pooled, entity_embeds, entity_position_ids, entity_attention_mask)
        return KPROutput(sentence_embedding=fused, pooled=pooled, last_hidden_state=hidden)

    def fuse(self, pooled: torch.Tensor, entity_embeds: torch.Tensor | None = None,
             entity_position_ids: torch.Tensor | None = None,
             entity_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled text vectors [B, H] + entity features -> the embedding (training with a frozen encoder caches
        ``pooled`` and calls this alone)."""
        b = pooled.shape[0]
        if entity_embeds is None:
            entity_embeds = pooled.new_zeros(b, 0, self.config.entity_dim)
            entity_position_ids = torch.full((b, 0, 1), -1, dtype=torch.long, device=pooled.device)
            entity_attention_mask = torch.zeros((b, 0), dtype=torch.long, device=pooled.device)
        elif entity_position_ids is None or entity_attention_mask is None:
            raise ValueError("entity_embeds given without entity_position_ids and entity_attention_mask")
        if entity_embeds.shape[-1] != self.config.entity_dim:
            raise ValueError(f"entity_embeds have dim {entity_embeds.shape[-1]}, the model expects "
                             f"{self.config.entity_dim} (entity table built for another model?)")
        fused = self.fusion(pooled, entity_embeds.to(pooled.dtype), entity_position_ids, entity_attention_mask)
        return nn.functional.normalize(fused, dim=-1) if self.config.normalize else fused

    def encode(self, **inputs) -> torch.Tensor:
        """The pooled, entity-fused embedding [B, H] for the tokenizer's output ``inputs``."""
        return self(**inputs).sentence_embedding
