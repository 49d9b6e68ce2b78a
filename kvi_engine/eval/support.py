"""Support recall: whether each question's gold supporting facts reached the model, in either channel (prompt text or
injected KV). Model-independent, so it is meaningful even with a random model."""
from __future__ import annotations

from kvi_engine.capsules.statements import render_statement


def support_recall(dataset, answers, capsules) -> dict[str, dict[str, float]]:
    """Per method, the share of questions (with ``support``) whose every supporting fact reached the model, in either
    channel: its provenance sentence or its statement is among the texts the method put in the prompt or the KV.
    Model-independent, so it is meaningful even with a random model. Keys: "all" and "<hops>-hop"."""
    facts = {c.triple: {c.sentence, render_statement(c)} - {""} for c in capsules if c.kind == "triple"}
    out: dict[str, dict[str, float]] = {}
    for name, rows in answers.items():
        hits: dict[str, list[float]] = {}
        for it, a in zip(dataset, rows):
            if not it.support:
                continue
            given = set(a.trace.evidence) | set(a.trace.injected_statements)
            ok = float(all(facts.get(tuple(t), set()) & given for t in it.support))
            hits.setdefault("all", []).append(ok)
            if it.hops is not None:
                hits.setdefault(f"{it.hops}-hop", []).append(ok)
        out[name] = {k: sum(v) / len(v) for k, v in hits.items()}
    return out


def recall_markdown(recall: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for v in recall.values() for k in v}, key=lambda k: (k != "all", k))
    lines = ["", "Support recall (% of questions whose every supporting fact reached the model, either channel):", "",
             "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {m} | " + " | ".join(f"{100 * v[k]:.1f}" if k in v else "—" for k in keys) + " |"
              for m, v in recall.items()]
    return "\n".join(lines) + "\n"
