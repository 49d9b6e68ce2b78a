"""Statement rendering: the short natural-language text each capsule is compiled from.

A triple renders through its relation's template ("{subject} causes {object}."); relations without a template
read as their words ("located_in" -> "located in"). Each entity gets one anchor statement ("SFTSV is a virus.").
"""
from __future__ import annotations

import json
import os
import string
from pathlib import Path

from kvi_engine.capsules.capsule import Capsule, Entity

DEFAULT_TEMPLATES: dict[str, str] = {
    "is_a": "{subject} is a {object}.",
    "instance_of": "{subject} is a {object}.",
    "part_of": "{subject} is part of {object}.",
    "located_in": "{subject} is located in {object}.",
    "capital_of": "{subject} is the capital of {object}.",
    "founded_by": "{subject} was founded by {object}.",
    "founded_in": "{subject} was founded in {object}.",
    "born_in": "{subject} was born in {object}.",
    "works_for": "{subject} works for {object}.",
    "member_of": "{subject} is a member of {object}.",
    "headquartered_in": "{subject} is headquartered in {object}.",
    "causes": "{subject} causes {object}.",
    "treated_by": "{subject} is treated by {object}.",
    "treats": "{subject} treats {object}.",
    "transmitted_by": "{subject} is transmitted by {object}.",
    "discovered_by": "{subject} was discovered by {object}.",
    "produces": "{subject} produces {object}.",
    "leads": "{subject} leads {object}.",
    "approved_by": "{subject} was approved by {object}.",
    "uses": "{subject} uses {object}.",
}


def load_templates(path: str | os.PathLike | None) -> dict[str, str]:
    """Default templates overlaid with a JSON object {relation: template} from ``path``. A template names exactly
    the fields ``{subject}`` and ``{object}`` (each at least once, nothing else); errors name the file and
    relation."""
    templates = dict(DEFAULT_TEMPLATES)
    if path is None:
        return templates
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such templates file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not a JSON templates file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping relation -> template")
    for rel, tpl in data.items():
        fault = template_fault(tpl)
        if fault:
            raise ValueError(f"{path}: template for {rel!r} {fault}")
        templates[rel] = tpl
    return templates


def template_fault(tpl, require_both: bool = True) -> str:
    """What is wrong with a statement template ("" when nothing). Templates read from a user's file must name both
    fields; internal ones may render one (the sentence bank's "{subject}")."""
    if not isinstance(tpl, str):
        return f"must be a string, got {type(tpl).__name__}"
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None}
    except ValueError as e:
        return f"is not a format string ({e})"
    unknown = sorted(fields - {"subject", "object"})
    if unknown:
        return f"names unknown field(s) {unknown}; a template may use only {{subject}} and {{object}}"
    if require_both and fields != {"subject", "object"}:
        return "must contain {subject} and {object}"
    if not fields:
        return "names no field: it must contain {subject} or {object}"
    return ""


def relation_words(relation: str) -> str:
    return relation.replace("_", " ").strip()


def render_statement(capsule: Capsule, templates: dict[str, str] | None = None) -> str:
    """The text a capsule is compiled from: its relation's template, or a sentence capsule's sentence itself."""
    if capsule.kind == "sentence":
        return capsule.sentence
    templates = DEFAULT_TEMPLATES if templates is None else templates
    tpl = templates.get(capsule.relation)
    if tpl is None:
        return f"{capsule.subject} {relation_words(capsule.relation)} {capsule.object}."
    return tpl.format(subject=capsule.subject, object=capsule.object)


def anchor_capsule(entity: Entity) -> Capsule:
    """The entity's anchor: "X is a <type>." (or its description when it has no type)."""
    obj = entity.type or entity.description or "entity"
    return Capsule(subject=entity.name, relation="is_a", object=obj, kind="anchor")


def has_content(entity: Entity) -> bool:
    """Whether the entity's anchor says anything ("X is an entity." does not, so it is never injected)."""
    return bool(entity.type or entity.description)


def anchor_statement(entity: Entity) -> str:
    if entity.type:
        article = "an" if entity.type[:1].lower() in "aeiou" else "a"
        return f"{entity.name} is {article} {entity.type}."
    if entity.description:
        return f"{entity.name}: {entity.description}"
    return f"{entity.name} is an entity."
