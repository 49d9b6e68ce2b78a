"""Query-side retrieval: intent -> relation set, DRM relevance scoring and selection, dense retrieval for the
baselines, and the grounding filter. Encoders follow one interface (``encode_queries`` / ``encode_passages``)."""
from kvi_engine.retrieval.capsule_retriever import NO_ENTITY, CapsuleRetriever, Retrieval, RetrievalConfig
from kvi_engine.retrieval.dense import DenseIndex, Hit
from kvi_engine.retrieval.drm import DRMConfig, DRMScorer, ScoredCapsule, Selection, lexical_overlap, select_capsules
from kvi_engine.retrieval.encoder import Encoder, MiniLMEncoder, default_encoder
from kvi_engine.retrieval.grounding import GroundedAnswer, GroundingFilter, Judgement
from kvi_engine.retrieval.intent import DEFAULT_INTENTS, Intent, IntentClassifier, IntentMatch, load_intents
from kvi_engine.retrieval.text import content_tokens

__all__ = ["CapsuleRetriever", "content_tokens", "default_encoder", "DEFAULT_INTENTS", "DenseIndex", "DRMConfig",
           "DRMScorer", "Encoder", "GroundedAnswer", "GroundingFilter", "Hit", "Intent", "IntentClassifier",
           "IntentMatch", "Judgement", "lexical_overlap", "load_intents", "MiniLMEncoder", "NO_ENTITY",
           "Retrieval", "RetrievalConfig", "ScoredCapsule", "select_capsules", "Selection"]
