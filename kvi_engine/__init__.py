"""kvi-engine: exact, batched knowledge injection into Hugging Face language models at the level of attention."""
import torch  # noqa: F401  (first: _core then shares PyTorch's OpenMP runtime, see csrc/kvi/parallel.h)

from kvi_engine import _core  # noqa: F401,E402  (the native core must build; failing loudly here beats failing later)

__version__ = "0.1.0"
__all__ = ["Capsule", "CapsuleFormatError", "Entity", "load_capsules", "load_entities", "save_capsules",
           "save_entities", "KVBank", "BankFormatError", "add_capsules", "compile_bank", "recompile_entity",
           "QuantSpec", "DeviceKVCache", "FingerprintMismatch", "inject", "KVIEngine", "InjectionPlan", "build_plan",
           "UnsupportedRoPE", "KnowledgeGraph", "EntityLinker"]

from kvi_engine.capsules import Capsule, CapsuleFormatError, Entity, load_capsules, load_entities  # noqa: E402
from kvi_engine.capsules import save_capsules, save_entities  # noqa: E402
from kvi_engine.bank import KVBank  # noqa: E402
from kvi_engine.bank_format import BankFormatError  # noqa: E402
from kvi_engine.compile import add_capsules, compile_bank, recompile_entity  # noqa: E402
from kvi_engine.quant_spec import QuantSpec  # noqa: E402
from kvi_engine.bank_cache import DeviceKVCache  # noqa: E402
from kvi_engine.fingerprint import FingerprintMismatch  # noqa: E402
from kvi_engine.inject import inject  # noqa: E402
from kvi_engine.engine import KVIEngine  # noqa: E402
from kvi_engine.plan import InjectionPlan, build_plan  # noqa: E402
from kvi_engine.rope import UnsupportedRoPE  # noqa: E402
from kvi_engine.graph import KnowledgeGraph  # noqa: E402,F401
from kvi_engine.linker import EntityLinker  # noqa: E402,F401
