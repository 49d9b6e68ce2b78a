"""Document loading: .txt / .md / .pdf files (one document each, id = file stem; title: a Markdown file's leading
heading, else none) and .jsonl (one ``{id, text,
title?}`` object per line), or a directory of them (sorted, recursive). Errors name the file and line (or page).
PDF text comes from the optional, pure-Python ``pypdf`` (``pip install 'kvi-engine[pdf]'``); pages are joined by
blank lines, so a sentence never spans two pages."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvi_engine.ingest.sentences import Sentence, document_sentences
from kvi_engine.utils.extras import require
from kvi_engine.utils.jsonl import read_jsonl

DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl", ".pdf")
_JSONL_KEYS = {"id", "text", "title"}


class DocumentFormatError(ValueError):
    """Malformed document input; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    markdown: bool = False

    def sentences(self) -> list[Sentence]:
        return document_sentences(self.id, self.text, self.markdown)


def _jsonl_documents(path: Path) -> list[Document]:
    docs = []
    for lineno, obj in read_jsonl(path, DocumentFormatError):
        where = f"{path}:{lineno}"
        unknown = set(obj) - _JSONL_KEYS
        if unknown:
            raise DocumentFormatError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_JSONL_KEYS)}")
        for key in ("id", "text"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DocumentFormatError(f"{where}: {key!r} must be a non-empty string")
        if ":" in obj["id"]:
            raise DocumentFormatError(f"{where}: document id {obj['id']!r} must not contain ':'")
        docs.append(Document(obj["id"], obj["text"], obj.get("title", "")))
    return docs


def _pdf_document(path: Path) -> Document:
    PdfReader = require("pypdf", "pdf", f"{path}: reading PDF").PdfReader
    try:
        reader = PdfReader(path)
        # An owner password alone (common) still opens with the empty user password.
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentFormatError(f"{path}: encrypted PDF; decrypt it first")
        pages = []
        for number, page in enumerate(reader.pages, 1):
            try:
                pages.append((page.extract_text() or "").strip())
            except Exception as e:  # noqa: BLE001 -- pypdf raises many types on malformed content streams
                raise DocumentFormatError(f"{path}: page {number}: cannot extract text: {e}") from None
        title = str((reader.metadata or {}).get("/Title") or "")
    except DocumentFormatError:
        raise
    except Exception as e:  # noqa: BLE001 -- malformed files surface as many pypdf (and struct/zlib) error types
        raise DocumentFormatError(f"{path}: not a readable PDF: {type(e).__name__}: {e}") from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise DocumentFormatError(f"{path}: no extractable text in {len(pages)} page(s) (a scanned PDF needs OCR)")
    doc_id = path.stem.replace(":", "_")
    return Document(doc_id, text, title or doc_id)


def _markdown_title(text: str) -> str:
    """The text of a Markdown file's first line when it is a heading ("# Oslo" -> "Oslo"), else no title: a file
    name is not the name of the document's subject, so plain files give open ingestion no title entity."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return first.lstrip("#").strip() if first.startswith("#") else ""


def _file_documents(path: Path) -> list[Document]:
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    if path.suffix == ".pdf":
        return [_pdf_document(path)]
    if path.suffix in (".txt", ".md"):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DocumentFormatError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8 "
                                      f"first") from None
        if not text.strip():
            raise DocumentFormatError(f"{path}: empty document")
        doc_id = path.stem.replace(":", "_")
        md = path.suffix == ".md"
        return [Document(doc_id, text, _markdown_title(text) if md else "", markdown=md)]
    raise DocumentFormatError(f"{path}: unsupported document type {path.suffix!r}; expected one of {DOCUMENT_SUFFIXES}")


def load_documents(*paths: str | os.PathLike) -> list[Document]:
    """Documents from files and/or directories, in a stable order; duplicate ids are an error."""
    docs: list[Document] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in DOCUMENT_SUFFIXES)
            if not files:
                raise DocumentFormatError(f"{p}: directory holds no {'/'.join(DOCUMENT_SUFFIXES)} documents")
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
        for f in files:
            docs.extend(_file_documents(f))
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise DocumentFormatError(f"document id {d.id!r} occurs twice in {', '.join(map(str, paths))}")
        seen.add(d.id)
    return docs
