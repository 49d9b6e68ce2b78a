"""kvi-engine: exact, batched knowledge injection into Hugging Face language models at the level of attention."""
from kvi_engine import _core  # noqa: F401  (the native core must build; failing loudly here beats failing later)

from kvi_engine.graph import KnowledgeGraph  # noqa: E402,F401
from kvi_engine.linker import EntityLinker  # noqa: E402,F401

__version__ = "0.1.0"
