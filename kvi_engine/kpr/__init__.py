"""Knowledgeable embeddings (KPR): dense retrieval whose embeddings fuse the vectors of linked entities; the entity
knowledge (linker, vocabulary, memory-mapped table) lives outside the weights and is rebuilt without retraining."""
from kvi_engine.kpr.config import KPRConfig
from kvi_engine.kpr.encoder import KPREncoder, TextEncoder
from kvi_engine.kpr.model import KPRModel
from kvi_engine.kpr.table import EntityTable, EntityTableError
from kvi_engine.kpr.tokenizer import KPRTokenizer

__all__ = ["KPRConfig", "KPRModel", "KPRTokenizer", "KPREncoder", "TextEncoder", "EntityTable", "EntityTableError"]
