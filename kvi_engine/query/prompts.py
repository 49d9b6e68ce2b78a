"""The prompt format shared by every compared method, so differences come from the knowledge channel only."""
from __future__ import annotations

from typing import Sequence


def qa_prompt(question: str, evidence: Sequence[str] = ()) -> str:
    """``Question: ...\\nAnswer:`` with optional evidence lines before it (RAG and the dual channel of KVI)."""
    if not question or not question.strip():
        raise ValueError("empty question")
    context = "".join(f"- {e.strip()}\n" for e in evidence if e.strip())
    head = f"Context:\n{context}" if context else ""
    return f"{head}Question: {question.strip()}\nAnswer:"
