"""KPRTokenizer: the base encoder's fast tokenizer plus the entity linker and the memory-mapped entity table.

``tok(texts, padding=True, return_tensors="pt")`` returns the base features (``input_ids``, ``attention_mask``,
...) and ``entity_ids`` [B, E], ``entity_position_ids`` [B, E, M], ``entity_attention_mask`` [B, E] and
``entity_embeds`` [B, E, dim] (float32 rows of the table). Loaded from a KPR model directory it attaches that
directory's linker and table; Sentence Transformers calls it like any tokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from transformers import BatchEncoding, TokenizersBackend

from kvi_engine.kpr.align import entity_slots
from kvi_engine.kpr.hub import atomic_copy, write_tokenizer_remote_code
from kvi_engine.kpr.table import LINKER_FILE, TABLE_FILE, VOCAB_FILE, EntityTable, EntityTableError

KNOWLEDGE_FILES = (VOCAB_FILE, TABLE_FILE, LINKER_FILE)
ENTITY_KEYS = ("entity_ids", "entity_position_ids", "entity_attention_mask", "entity_embeds")


class KPRTokenizer(TokenizersBackend):
    max_entities: int = 32
    max_mention_length: int = 16
    min_prior: float = 0.0

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, knowledge: bool = True, **kwargs):
        """``knowledge=False`` loads the word-piece tokenizer alone (e.g. from a plain encoder directory)."""
        tok = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if knowledge:
            tok.attach_knowledge(pretrained_model_name_or_path)
        return tok

    def attach_knowledge(self, directory: str | os.PathLike, linker=None, table: EntityTable | None = None) -> None:
        from kvi_engine.graph.linker import EntityLinker

        directory = Path(directory)
        table = table if table is not None else EntityTable.open(directory)
        if linker is None:
            lpath = directory / LINKER_FILE
            if not lpath.is_file():
                raise FileNotFoundError(f"{lpath}: entity linker missing (build it with `kvi kpr build`)")
            linker = EntityLinker.load(str(lpath))
        self.linker, self.table, self.knowledge_dir = linker, table, directory
        cfg = directory / "config.json"
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            self.max_entities = int(c.get("max_entities", self.max_entities))
            self.max_mention_length = int(c.get("max_mention_length", self.max_mention_length))
            self.min_prior = float(c.get("min_prior", self.min_prior))
            if int(c.get("entity_dim", table.dim)) != table.dim:
                raise EntityTableError(f"{directory / TABLE_FILE}: dim {table.dim} but {cfg} expects "
                                       f"entity_dim={c['entity_dim']}")

    @property
    def has_knowledge(self) -> bool:
        return getattr(self, "table", None) is not None

    def link(self, texts: list[str]):
        return self.linker.link(texts, min_prior=self.min_prior)

    def __call__(self, text=None, text_pair=None, *args, **kwargs) -> BatchEncoding:
        if text_pair is not None or kwargs.get("is_split_into_words") or args:
            raise ValueError("KPRTokenizer encodes single raw texts (no pairs, no pre-split words)")
        if not self.has_knowledge:
            raise RuntimeError("KPRTokenizer has no entity knowledge attached: load it from a KPR model directory")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text {i} is empty or not a string ({t!r}): nothing to embed")
        keep_offsets = kwargs.pop("return_offsets_mapping", False)
        return_tensors = kwargs.pop("return_tensors", None)
        enc = super().__call__(texts, return_offsets_mapping=True, **kwargs)
        offsets = enc["offset_mapping"] if keep_offsets else enc.pop("offset_mapping")
        ids, pos, mask = entity_slots(self.link(texts), offsets, self.max_entities, self.max_mention_length)
        embeds = np.zeros((*ids.shape, self.table.dim), dtype=np.float32)
        valid = mask.astype(bool)
        embeds[valid] = self.table.lookup(ids[valid])
        enc.update(dict(zip(ENTITY_KEYS, (ids, pos, mask, embeds))))
        if return_tensors is not None:
            return BatchEncoding(dict(enc), tensor_type=return_tensors)
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in enc.items()}
        return BatchEncoding({k: v[0] for k, v in out.items()} if single else out)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also copies the linker, vocabulary and table next to the tokenizer files (if saving elsewhere)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        src, dst = getattr(self, "knowledge_dir", None), Path(save_directory)
        if src is not None and Path(src).resolve() != dst.resolve():
            for name in KNOWLEDGE_FILES:
                atomic_copy(Path(src) / name, dst / name)
        write_tokenizer_remote_code(dst)
        return out
