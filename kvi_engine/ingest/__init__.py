"""Ingestion: documents -> sentences with stable ids -> triples (capsules) with provenance -> normalised entities."""
from pathlib import Path

from kvi_engine.ingest.documents import Document, DocumentFormatError, load_documents
from kvi_engine.ingest.sentences import Sentence, document_sentences, split_sentences
from kvi_engine.ingest.store import SentenceStore, SentenceStoreError, sentence_store_from_documents


def sample_dir() -> Path:
    """The shipped fictional sample corpus (docs, entities, capsules, questions)."""
    return Path(__file__).resolve().parent.parent / "data" / "sample"


__all__ = ["Document", "DocumentFormatError", "Sentence", "SentenceStore", "SentenceStoreError", "document_sentences",
           "load_documents", "sample_dir", "sentence_store_from_documents", "split_sentences"]
