"""kvi-engine: exact, batched knowledge injection into Hugging Face language models at the level of attention."""
from kvi_engine import _core  # noqa: F401  (the native core must build; failing loudly here beats failing later)

__version__ = "0.1.0"
