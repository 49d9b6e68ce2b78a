"""The running batch of a continuously batching server: one row per choice being generated, its own KV in one
left-padded HF cache, an explicit attention mask and explicit positions per row.

Rows join after their prefill (their cache is left-padded to the batch's length, or the batch's to theirs) and
leave when they finish (their rows are selected out, and padding that every remaining row has is trimmed), so the
cache is as long as the longest remaining row. Positions are each row's own count of real tokens; the injection
adds the row's plan offset (its injected tokens) on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvi_engine.serve.request import Choice, Request


@dataclass(slots=True, eq=False)
class Row:
    request: Request
    choice: Choice
    generator: object = None

    @property
    def capsule_ids(self) -> list[int]:
        return self.request.capsule_ids

    @property
    def position(self) -> int:
        """Position (before the plan offset) of the row's last token, the next decode step's input."""
        return len(self.request.prompt_ids) + len(self.choice.tokens) - 1


def _layers(cache):
    return cache.layers


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [extra, 0]
    return F.pad(x, pad)


class RunningBatch:
    def __init__(self):
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [rows, cache length] long, 0 = left padding
        self.version = 0  # bumped whenever rows join or leave (the batch plan is rebuilt then)

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[Row], cache, mask: torch.Tensor) -> None:
        """Add prefilled ``rows`` with their ``cache`` (one row each, in order) and ``mask [rows, length]``."""
        if not rows:
            return
        self.version += 1
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(cache)):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)], dim=0)
        self.rows += rows

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (in that order); trim left padding every kept row has."""
        if len(indices) == len(self.rows):
            return
        self.version += 1
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(indices, dtype=torch.long)
        self.rows = [self.rows[i] for i in indices]
        self.mask = self.mask[idx]
        lead = int((self.mask.cumsum(1) == 0).sum(1).min())  # leading zeros shared by every row
        if lead:
            self.mask = self.mask[:, lead:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys[idx, :, lead:]
            layer.values = layer.values[idx, :, lead:]

    def step_inputs(self, device) -> dict:
        """``model(**inputs)`` for one decode step: every row's last token at its own position."""
        ids = torch.tensor([[r.choice.tokens[-1]] for r in self.rows], device=device)
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], dim=1)
        pos = torch.tensor([[r.position] for r in self.rows], device=device)
        return dict(input_ids=ids, attention_mask=self.mask.to(device), position_ids=pos, past_key_values=self.cache,
                    use_cache=True, logits_to_keep=1)
