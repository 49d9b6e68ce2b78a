"""Triple extraction with a frozen causal LM: prompted, JSON output, validated, provenance kept.

The model sees one sentence per prompt and must answer with a JSON array of ``{"subject", "relation", "object"}``
objects. Nothing it writes is trusted: output without a JSON array, malformed JSON, items with missing or extra keys,
relations outside the allowed set and arguments that do not occur in the sentence (hallucinations) are rejected,
each with a reason. Provenance (sentence id and text) comes from the input sentence, never from the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.capsules.statements import DEFAULT_TEMPLATES
from kvi_engine.ingest.entities import AliasTable, canonicalize_capsules, normalize
from kvi_engine.ingest.sentences import Sentence

PROMPT = (
    "Extract the facts stated in the sentence as a JSON array. Each item is "
    '{{"subject": "...", "relation": "...", "object": "..."}}. Allowed relations: {relations}. '
    "Copy subject and object from the sentence. If the sentence states no such fact, answer [].\n"
    "Sentence: {sentence}\nJSON:"
)
_ITEM_KEYS = {"subject", "relation", "object"}


@dataclass(frozen=True, slots=True)
class Rejection:
    sentence_id: str
    reason: str
    raw: str


@dataclass(slots=True)
class Extraction:
    capsules: list[Capsule] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def parse_triples(output: str, sentence: Sentence, relations: Iterable[str],
                  aliases: AliasTable | None = None) -> Extraction:
    """Validate one model answer for ``sentence``; accepted triples carry the sentence's id and text."""
    result = Extraction()
    start = output.find("[")
    if start < 0:
        result.rejections.append(Rejection(sentence.id, "no JSON array in output", output))
        return result
    try:
        items, _ = json.JSONDecoder().raw_decode(output[start:])
    except json.JSONDecodeError as e:
        result.rejections.append(Rejection(sentence.id, f"malformed JSON: {e.msg}", output))
        return result
    allowed = set(relations)
    in_sentence = normalize(sentence.text)
    for item in items:
        raw = json.dumps(item, ensure_ascii=False)
        reason = _invalid(item, allowed, in_sentence, aliases)
        if reason:
            result.rejections.append(Rejection(sentence.id, reason, raw))
            continue
        rel = _relation_key(item["relation"])
        subj, obj = (_canonical(item[k].strip(), aliases) for k in ("subject", "object"))
        result.capsules.append(Capsule(subj, rel, obj, sentence.id, sentence.text))
    return result


def _relation_key(relation: str) -> str:
    return "_".join(relation.strip().lower().replace("-", " ").split())


def _canonical(surface: str, aliases: AliasTable | None) -> str:
    return (aliases.resolve(surface) if aliases else None) or surface


def _invalid(item, allowed: set[str], sentence_key: str, aliases: AliasTable | None) -> str | None:
    if not isinstance(item, dict):
        return f"item is a {type(item).__name__}, not an object"
    if set(item) != _ITEM_KEYS:
        return f"item keys {sorted(item)}; expected {sorted(_ITEM_KEYS)}"
    for k in sorted(_ITEM_KEYS):
        if not isinstance(item[k], str) or not item[k].strip():
            return f"{k} must be a non-empty string"
    if _relation_key(item["relation"]) not in allowed:
        return f"relation {item['relation']!r} is not allowed"
    for k in ("subject", "object"):
        if not _grounded(item[k], sentence_key, aliases):
            return f"{k} {item[k]!r} does not occur in the sentence"
    return None


def _grounded(surface: str, sentence_key: str, aliases: AliasTable | None) -> bool:
    if normalize(surface) in sentence_key:
        return True
    name = aliases.resolve(surface) if aliases else None
    return name is not None and any(normalize(n) in sentence_key for n in aliases.entities[name].names)


class LLMExtractor:
    """Any HF causal LM + tokenizer; greedy decoding, batched with left padding."""

    def __init__(self, model, tokenizer, relations: Sequence[str] | None = None,
                 entities: Iterable[Entity] | None = None, batch_size: int = 8, max_new_tokens: int = 96):
        self.model, self.tokenizer = model, tokenizer
        self.relations = list(DEFAULT_TEMPLATES if relations is None else relations)
        self.aliases = AliasTable(entities) if entities is not None else None
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def prompt(self, sentence: Sentence) -> str:
        text = PROMPT.format(relations=", ".join(self.relations), sentence=sentence.text)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[str]:
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; cannot batch prompts")
        side, tok.padding_side = tok.padding_side, "left"
        saved_pad = tok.pad_token
        try:
            if tok.pad_token is None:  # e.g. Llama tokenizers: pad with eos for this call only
                tok.pad_token = tok.eos_token
            enc = tok(prompts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
            if saved_pad is None:
                tok.pad_token = None
        device = next(self.model.parameters()).device
        out = self.model.generate(input_ids=enc["input_ids"].to(device),
                                  attention_mask=enc["attention_mask"].to(device),
                                  max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=pad_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def extract(self, sentences: Iterable[Sentence]) -> Extraction:
        sentences = list(sentences)
        result = Extraction()
        for i in range(0, len(sentences), self.batch_size):
            batch = sentences[i:i + self.batch_size]
            for s, text in zip(batch, self.generate([self.prompt(s) for s in batch])):
                one = parse_triples(text, s, self.relations, self.aliases)
                result.capsules.extend(one.capsules)
                result.rejections.extend(one.rejections)
        if self.aliases is not None:
            result.capsules = canonicalize_capsules(result.capsules, self.aliases)
        return result
