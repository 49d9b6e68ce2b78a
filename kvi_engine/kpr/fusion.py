"""The entity fusion layer: a single query (the pooled text vector) attends over [learned no-op; entities].

Entity representation: LayerNorm(W_e v + mean of the position embeddings of the mention's word pieces).
Attention: sigmoid(q.k / sqrt(d) - log n) over the n = 1 + #entities items of a row (or softmax), then
LayerNorm(h + W_o sum_i a_i v_i). With no entity the no-op alone is attended, so every text gets an embedding.
W_o starts at zero: an untrained fusion layer leaves the text vector unchanged up to the final LayerNorm.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class EntityFusion(nn.Module):
    def __init__(self, hidden_size: int, entity_dim: int, max_positions: int, num_heads: int = 1,
                 attention: str = "sigmoid", dropout: float = 0.0, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention = attention
        self.entity_proj = nn.Linear(entity_dim, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.entity_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.noop = nn.Parameter(torch.zeros(hidden_size))
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def entity_states(self, entity_embeds: torch.Tensor, entity_position_ids: torch.Tensor) -> torch.Tensor:
        """``entity_embeds`` [B, E, De], ``entity_position_ids`` [B, E, M] (-1 = padding) -> [B, E, H]."""
        valid = entity_position_ids >= 0
        pos = self.position_embeddings(entity_position_ids.clamp(min=0)) * valid.unsqueeze(-1)
        span_mean = pos.sum(2) / valid.sum(2, keepdim=True).clamp(min=1)
        return self.entity_norm(self.entity_proj(entity_embeds.to(self.entity_proj.weight.dtype)) + span_mean)

    def forward(self, pooled: torch.Tensor, entity_embeds: torch.Tensor, entity_position_ids: torch.Tensor,
                entity_attention_mask: torch.Tensor) -> torch.Tensor:
        """``pooled`` [B, H]; entity tensors as in :meth:`entity_states`, mask [B, E] -> fused [B, H]."""
        b, h = pooled.shape
        items = torch.cat([self.noop.expand(b, 1, h), self.entity_states(entity_embeds, entity_position_ids)], 1)
        mask = torch.cat([entity_attention_mask.new_ones(b, 1), entity_attention_mask], 1).bool()
        q = self.q_proj(pooled).view(b, self.num_heads, 1, self.head_dim)
        k = self.k_proj(items).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(items).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(self.head_dim)  # [B, heads, n]
        mask = mask.unsqueeze(1)
        if self.attention == "sigmoid":
            n = mask.sum(-1, keepdim=True).to(scores.dtype)
            weights = torch.sigmoid(scores - torch.log(n)) * mask
        else:
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        attended = (weights.unsqueeze(-1) * v).sum(2).reshape(b, h)
        return self.out_norm(pooled + self.dropout(self.o_proj(attended)))
