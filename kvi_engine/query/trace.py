"""What an answer carries: the trace of everything that reached the model and what the grounding filter did."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Trace:
    method: str
    entities: list[str] = field(default_factory=list)
    intent: list[str] = field(default_factory=list)
    triples: list[dict] = field(default_factory=list)  # selected: subject, relation, object, score, hop, capsule_id
    candidates: int = 0
    passages: list[dict] = field(default_factory=list)  # dense hits: id, text, score
    evidence: list[str] = field(default_factory=list)  # prompt text channel
    injected: list[int] = field(default_factory=list)  # ids in ``bank``
    bank: str = ""  # "capsules" | "sentences" | "" (no KV)
    injected_statements: list[str] = field(default_factory=list)
    fallback: str | None = None
    raw: str = ""  # model output before post-processing and grounding
    dropped: list[dict] = field(default_factory=list)  # grounding: sentence, support, reason
    grounded: bool = False  # False: no evidence to check against (text unchanged)
    reached: list[str] = field(default_factory=list)  # sentence ids that reached the model (text or KV provenance)


@dataclass(slots=True)
class Answer:
    question: str
    text: str
    trace: Trace

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "trace": asdict(self.trace)}


def postprocess(text: str) -> str:
    """The first non-empty line: models continue with a new "Question:" after answering."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
