"""Linker character spans -> word-piece positions, on the real all-MiniLM-L6-v2 word pieces."""
from collections import namedtuple

import numpy as np
import pytest
from transformers import AutoTokenizer

from kvi_engine.kpr.align import entity_slots, mention_token_positions
from kvi_engine.utils.paths import minilm_path

M = namedtuple("M", "start end text candidates")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(minilm_path()))


def span(text, sub, nth=0):
    i = -1
    for _ in range(nth + 1):
        i = text.index(sub, i + 1)
    return i, i + len(sub)


def pieces(tok, text, sub, **kw):
    enc = tok(text, return_offsets_mapping=True, **kw)
    pos = mention_token_positions(enc["offset_mapping"], *span(text, sub))
    return [enc.tokens()[p] for p in pos]


def test_subwords_and_accents(tok):
    text = "Where was Kesul Bomive born? Café Zürich, in Ångström-based Kanolmoor."
    assert "".join(p.removeprefix("##") for p in pieces(tok, text, "Kesul Bomive")) == "kesulbomive"
    assert len(pieces(tok, text, "Kesul Bomive")) > 2  # really split into sub-words
    assert pieces(tok, text, "Café Zürich") == ["cafe", "zurich"]  # offsets point at the accented original
    assert "".join(p.removeprefix("##") for p in pieces(tok, text, "Ångström")) == "angstrom"
    assert pieces(tok, text, "Kanolmoor")[0].startswith("kan")


def test_mention_inside_a_word_piece_takes_the_overlapping_piece(tok):
    text = "the Morrowfield estate"
    assert "".join(p.removeprefix("##") for p in pieces(tok, text, "Morrowfield")) == "morrowfield"
    # a mention that covers part of a piece still lands on that piece rather than vanishing
    assert pieces(tok, text, "Morrow")


def test_truncated_and_special_tokens_never_match(tok):
    text = "alpha beta gamma delta Kesul"
    enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=4)
    assert mention_token_positions(enc["offset_mapping"], *span(text, "Kesul")) == []
    assert mention_token_positions(enc["offset_mapping"], 0, 0) == []


def test_slots_overlapping_ambiguous_capped(tok):
    texts = ["The Northern Velm Shipping Company hired Kesul.", "Nothing to link here."]
    t = texts[0]
    mentions = [[M(*span(t, "Kesul"), "Kesul", [(7, 1.0)]),
                 M(*span(t, "Northern Velm Shipping Company"), "", [(3, 1.0)]),
                 M(*span(t, "Velm"), "Velm", [(4, 0.5), (5, 0.5)])], []]
    enc = tok(texts, return_offsets_mapping=True, padding=True)
    ids, pos, mask = entity_slots(mentions, enc["offset_mapping"], max_entities=8, max_mention_length=16)
    # order: by mention start, then candidate order; both candidates of the ambiguous "Velm" get a slot
    assert ids.tolist() == [[3, 4, 5, 7], [-1, -1, -1, -1]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    velm = mention_token_positions(enc["offset_mapping"][0], *span(t, "Velm"))
    assert set(velm) < set(pos[0, 0][pos[0, 0] >= 0].tolist())  # overlapping mention inside the long one
    assert pos[0, 1][pos[0, 1] >= 0].tolist() == velm == pos[0, 2][pos[0, 2] >= 0].tolist()
    assert (pos[1] == -1).all()
    ids, pos, mask = entity_slots(mentions, enc["offset_mapping"], max_entities=2, max_mention_length=2)
    assert ids.tolist() == [[3, 4], [-1, -1]] and pos.shape == (2, 2, 2)
    ids, pos, mask = entity_slots([[], []], enc["offset_mapping"], 8, 16)
    assert ids.shape == (2, 0) and pos.shape == (2, 0, 1) and mask.dtype == np.int64
