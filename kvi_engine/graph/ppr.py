"""Personalised PageRank over the bipartite entity-sentence graph of a knowledge graph's mentions (op ``graph.ppr``).

Nodes are the sentences and the entities; a step from a sentence goes to one of the entities it mentions in
proportion to the entity's specificity (``idf = log(1 + S / df)``, so a hub such as "American" passes on little), a
step from an entity to one of the sentences mentioning it, uniformly. With restart probability ``a`` and reset
distribution ``r`` (the question's entities, or its nearest sentences), ``iterations`` synchronous updates of

    p_entity   <- a * r_entity   + (1 - a) * sum over its sentences s of p_s * w_se(s, e)
    p_sentence <- a * r_sentence + (1 - a) * sum over its entities e of p_e / df(e)

start from ``p = r``; mass reaching a node without edges is dropped (the ranking, not a distribution, is used). The
C++ core (``csrc/kvi/ppr.h``) and this numpy twin compute the same thing; the twin is the oracle in tests.
"""
from __future__ import annotations

import numpy as np

from kvi_engine import dispatch


def _segment_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Sum of ``values[indptr[i]:indptr[i+1]]`` for every row i (0 for an empty row), in float64."""
    out = np.zeros(indptr.shape[0] - 1, np.float64)
    if values.size:
        c = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
        out = c[indptr[1:]] - c[indptr[:-1]]
    return out


def ppr_reference(s_indptr, s_entities, s_weight, e_indptr, e_sentences, e_weight, reset_s, reset_e,
                  restart: float, iterations: int):
    """``(p_sentences float32[S], p_entities float32[N])``. ``s_*``: sentence-major CSR of the mentions with
    ``s_weight`` = the entity -> sentence step (1/df of the entity); ``e_*``: entity-major CSR with ``e_weight`` =
    the sentence -> entity step of that pair."""
    _check(s_indptr, s_entities, s_weight, e_indptr, e_sentences, e_weight, reset_s, reset_e, restart, iterations)
    a = float(restart)
    rs, re_ = reset_s.astype(np.float64), reset_e.astype(np.float64)
    ps, pe = rs.copy(), re_.copy()
    for _ in range(iterations):
        pe_new = a * re_ + (1 - a) * _segment_sum(ps[e_sentences] * e_weight, e_indptr)
        ps = a * rs + (1 - a) * _segment_sum(pe[s_entities] * s_weight, s_indptr)
        pe = pe_new
    return ps.astype(np.float32), pe.astype(np.float32)


def _check(s_indptr, s_entities, s_weight, e_indptr, e_sentences, e_weight, reset_s, reset_e, restart, iterations):
    S, N, M = reset_s.shape[0], reset_e.shape[0], s_entities.shape[0]
    for a, name, dt, n in ((s_indptr, "s_indptr", np.int64, S + 1), (s_entities, "s_entities", np.int32, M),
                           (s_weight, "s_weight", np.float32, M), (e_indptr, "e_indptr", np.int64, N + 1),
                           (e_sentences, "e_sentences", np.int32, M), (e_weight, "e_weight", np.float32, M),
                           (reset_s, "reset_s", np.float32, S), (reset_e, "reset_e", np.float32, N)):
        if not isinstance(a, np.ndarray) or a.dtype != dt:
            raise TypeError(f"{name}: expected dtype {np.dtype(dt)}")
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"ppr: {name} must be a 1-D array of length {n}")
    if not 0.0 < restart <= 1.0 or iterations < 0:
        raise ValueError(f"ppr: restart must be in (0, 1] and iterations >= 0, got {restart}, {iterations}")
    for ptr, name in ((s_indptr, "s_indptr"), (e_indptr, "e_indptr")):
        if ptr[0] != 0 or ptr[-1] != M or np.any(np.diff(ptr) < 0):
            raise ValueError(f"ppr: {name} must rise from 0 to {M}")
    if M and (s_entities.min() < 0 or s_entities.max() >= N or e_sentences.min() < 0 or e_sentences.max() >= S):
        raise ValueError("ppr: a mention names a node out of range")


def _cpp_ppr(*args):
    from kvi_engine import _core
    return _core.ppr(*args)


dispatch.register("graph.ppr", "cpp", _cpp_ppr, available=lambda: dispatch.core_has("ppr"),
                  why_not="kvi_engine._core lacks ppr")
dispatch.register("graph.ppr", "reference", ppr_reference)


class MentionWalk:
    """The transition weights of a graph's mention adjacency, ready for :meth:`run`."""

    def __init__(self, mentions, backend: str | None = None):
        m = mentions
        S, N = m.indptr.shape[0] - 1, m.entity_indptr.shape[0] - 1
        self.num_sentences, self.num_entities = S, N
        self.df = np.diff(m.entity_indptr).astype(np.float64)
        self.idf = np.log1p(max(m.num_sentence_capsules, 1) / np.maximum(self.df, 1.0))
        self.s_indptr, self.s_entities = m.indptr, m.entities
        self.e_indptr, self.e_sentences = m.entity_indptr, m.sentences
        self.s_weight = (1.0 / np.maximum(self.df, 1.0))[m.entities].astype(np.float32)
        row_idf = _segment_sum(self.idf[m.entities], m.indptr)  # per sentence: sum of its entities' idf
        e_of_row = np.repeat(np.arange(N, dtype=np.int64), np.diff(m.entity_indptr))
        denom = row_idf[m.sentences]
        self.e_weight = np.where(denom > 0, self.idf[e_of_row] / np.where(denom > 0, denom, 1.0), 0.0) \
            .astype(np.float32)
        self.backend, self._run = dispatch.select("graph.ppr", backend)

    def run(self, reset_s: np.ndarray, reset_e: np.ndarray, restart: float, iterations: int):
        return self._run(self.s_indptr, self.s_entities, self.s_weight, self.e_indptr, self.e_sentences,
                         self.e_weight, np.ascontiguousarray(reset_s, np.float32),
                         np.ascontiguousarray(reset_e, np.float32), float(restart), int(iterations))
