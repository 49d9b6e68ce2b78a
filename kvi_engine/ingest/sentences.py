"""Documents -> sentences with stable ids ("<doc_id>:s<k>", k counted from 1 within the document).

Ids depend only on the document id and the document text, so re-ingesting an unchanged document yields the same ids.
Latin text splits after . ! ? followed by whitespace and an upper-case letter, digit or quote; CJK text splits after
。！？ (no whitespace needed). Markdown headings, list markers and emphasis are stripped before splitting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LATIN_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9\u00C0-\u024F\u3040-\u30FF\u3400-\u9FFF\uAC00-\uD7AF])")
_CJK_END = re.compile(r"(?<=[。！？])(?![。！？」』”’）])|(?<=[!?])(?=[\u3400-\u9FFF])")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_MD_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


@dataclass(frozen=True, slots=True)
class Sentence:
    id: str
    doc_id: str
    text: str


def split_sentences(text: str) -> list[str]:
    """Split one paragraph of running text into sentences (English and CJK)."""
    out: list[str] = []
    for chunk in _LATIN_END.split(text.strip()):
        for piece in _CJK_END.split(chunk):
            piece = " ".join(piece.split())
            if piece:
                out.append(piece)
    return out


def paragraphs(text: str, markdown: bool = False) -> list[str]:
    """Blank-line separated paragraphs; with ``markdown`` headings become their own paragraph and markup is removed."""
    paras: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if markdown:
            if _MD_HEADING.match(line):
                if current:
                    paras.append(" ".join(current))
                    current = []
                continue  # headings are titles, not statements
            line = _MD_LINK.sub(r"\1", _MD_EMPHASIS.sub("", _MD_LIST.sub("", line)))
        if line.strip():
            current.append(line.strip())
        elif current:
            paras.append(" ".join(current))
            current = []
    if current:
        paras.append(" ".join(current))
    return paras


def document_sentences(doc_id: str, text: str, markdown: bool = False) -> list[Sentence]:
    if not doc_id or ":" in doc_id:
        raise ValueError(f"document id must be non-empty and contain no ':', got {doc_id!r}")
    texts = [s for p in paragraphs(text, markdown) for s in split_sentences(p)]
    return [Sentence(f"{doc_id}:s{k}", doc_id, t) for k, t in enumerate(texts, 1)]
