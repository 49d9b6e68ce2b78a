"""Linker mentions (character spans) -> entity slots aligned to word pieces.

Every candidate of a mention gets its own slot carrying the mention's word-piece positions; the fusion attention,
not the tokenizer, chooses among the candidates of an ambiguous mention. Overlapping mentions each get slots.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def mention_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the word pieces overlapping the character span [start, end). Special and padding tokens carry
    the empty offset (0, 0) and never match; a mention truncated away has no positions."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def entity_slots(mentions_per_text: Sequence[Sequence], offsets_per_text: Sequence[Sequence[tuple[int, int]]],
                 max_entities: int, max_mention_length: int, min_prior: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ``entity_ids`` [B, E] int64 (-1 = padding), ``entity_position_ids`` [B, E, M] int64 (-1 = padding),
    ``entity_attention_mask`` [B, E] int64. Slots follow mention order (start, end), then candidate order
    (prior, descending); at most ``max_entities`` per text and ``max_mention_length`` positions per slot."""
    if len(mentions_per_text) != len(offsets_per_text):
        raise ValueError(f"{len(mentions_per_text)} mention lists for {len(offsets_per_text)} texts")
    rows: list[list[tuple[int, list[int]]]] = []
    for mentions, offsets in zip(mentions_per_text, offsets_per_text):
        slots: list[tuple[int, list[int]]] = []
        for m in sorted(mentions, key=lambda m: (m.start, m.end)):
            positions = mention_token_positions(offsets, m.start, m.end)[:max_mention_length]
            if not positions:
                continue
            for entity_id, prior in m.candidates:
                if prior >= min_prior and len(slots) < max_entities:
                    slots.append((int(entity_id), positions))
        rows.append(slots)
    b = len(rows)
    e = max((len(r) for r in rows), default=0)
    m = max((len(p) for r in rows for _, p in r), default=1)
    ids = np.full((b, e), -1, dtype=np.int64)
    pos = np.full((b, e, m), -1, dtype=np.int64)
    mask = np.zeros((b, e), dtype=np.int64)
    for i, r in enumerate(rows):
        for j, (entity_id, positions) in enumerate(r):
            ids[i, j] = entity_id
            pos[i, j, :len(positions)] = positions
            mask[i, j] = 1
    return ids, pos, mask
