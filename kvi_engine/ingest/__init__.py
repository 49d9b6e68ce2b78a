"""Ingestion: documents -> sentences with stable ids -> triples (capsules) with provenance -> normalised entities."""
from kvi_engine.ingest.assets import Assets, build_assets, save_assets
from kvi_engine.ingest.documents import Document, DocumentFormatError, load_documents
from kvi_engine.ingest.entities import AliasTable, canonicalize_capsules, merge_entities, normalize
from kvi_engine.ingest.llm import Extraction, LLMExtractor, Rejection, parse_triples
from kvi_engine.ingest.rules import RuleExtractor
from kvi_engine.ingest.sentences import Sentence, document_sentences, split_sentences
from kvi_engine.ingest.store import SentenceStore, SentenceStoreError, sentence_store_from_documents

__all__ = ["AliasTable", "Assets", "build_assets", "canonicalize_capsules", "Document", "document_sentences",
           "DocumentFormatError", "Extraction", "LLMExtractor", "load_documents", "merge_entities", "normalize",
           "parse_triples", "Rejection", "RuleExtractor", "save_assets", "Sentence",
           "sentence_store_from_documents", "SentenceStore", "SentenceStoreError", "split_sentences"]
