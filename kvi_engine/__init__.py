"""kvi-engine: exact, batched knowledge injection into Hugging Face language models at the level of attention.

The public API (see README.md): capsules and entities, ``compile_bank`` and ``KVBank``, ``inject`` and
``KVIEngine``, ``KnowledgeGraph`` and ``EntityLinker``; KPR lives in :mod:`kvi_engine.kpr`.
"""
# isort: off
import torch  # noqa: F401  (first: _core then shares PyTorch's OpenMP runtime, see csrc/kvi/parallel.h)

from kvi_engine import _core  # noqa: F401,E402  (the native core must build: failing here beats failing later)
from kvi_engine._version import __version__  # noqa: E402,F401
from kvi_engine.bank.bank import KVBank  # noqa: E402
from kvi_engine.bank.residency import DeviceKVCache  # noqa: E402
from kvi_engine.bank.spec import QuantSpec  # noqa: E402
from kvi_engine.capsules.capsule import Capsule, CapsuleFormatError, Entity  # noqa: E402
from kvi_engine.capsules.capsule import load_capsules, load_entities, save_capsules, save_entities  # noqa: E402
from kvi_engine.compile.compiler import add_capsules, compile_bank, recompile_entity  # noqa: E402
from kvi_engine.formats.container import BankFormatError, FormatError  # noqa: E402
from kvi_engine.generate.engine import KVIEngine  # noqa: E402
from kvi_engine.generate.inject import inject  # noqa: E402
from kvi_engine.graph.knowledge_graph import KnowledgeGraph  # noqa: E402
from kvi_engine.graph.linker import EntityLinker  # noqa: E402
from kvi_engine.models.fingerprint import FingerprintMismatch  # noqa: E402
from kvi_engine.models.rope import UnsupportedRoPE  # noqa: E402
from kvi_engine.plan.plan import InjectionPlan, build_plan  # noqa: E402
# isort: on

__all__ = ["Capsule", "CapsuleFormatError", "Entity", "load_capsules", "load_entities", "save_capsules",
           "save_entities", "KVBank", "FormatError", "BankFormatError", "add_capsules", "compile_bank",
           "recompile_entity", "QuantSpec", "DeviceKVCache", "FingerprintMismatch", "inject", "KVIEngine",
           "InjectionPlan", "build_plan", "UnsupportedRoPE", "KnowledgeGraph", "EntityLinker"]
