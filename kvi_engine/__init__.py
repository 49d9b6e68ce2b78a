"""kvi-engine: exact, batched knowledge injection into Hugging Face language models at the level of attention.

The public API (see README.md): capsules and entities, ``compile_bank`` and ``KVBank``, ``inject`` and
``KVIEngine``, ``KnowledgeGraph`` and ``EntityLinker``; KPR lives in :mod:`kvi_engine.kpr`.

Public names are imported on first use (PEP 562): importing a subpackage (``kvi_engine.bank``, the vLLM
integration) loads PyTorch and the native core, not transformers' internals, which ``inject`` and the compiler
need and which differ between the transformers versions other engines (vLLM) pin.
"""
# isort: off
import importlib

import torch  # noqa: F401  (first: _core then shares PyTorch's OpenMP runtime, see csrc/kvi/parallel.h)

from kvi_engine import _core  # noqa: F401,E402  (the native core must build: failing here beats failing later)
from kvi_engine._version import __version__  # noqa: E402,F401
# isort: on

_PUBLIC = {  # name -> module that defines it
    "KVBank": "kvi_engine.bank.bank", "DeviceKVCache": "kvi_engine.bank.residency",
    "QuantSpec": "kvi_engine.bank.spec",
    **dict.fromkeys(["Capsule", "CapsuleFormatError", "Entity", "load_capsules", "load_entities", "save_capsules",
                     "save_entities"], "kvi_engine.capsules.capsule"),
    **dict.fromkeys(["add_capsules", "compile_bank", "recompile_entity"], "kvi_engine.compile.compiler"),
    **dict.fromkeys(["BankFormatError", "FormatError"], "kvi_engine.formats.container"),
    "KVIEngine": "kvi_engine.generate.engine", "inject": "kvi_engine.generate.inject",
    "KnowledgeGraph": "kvi_engine.graph.knowledge_graph", "EntityLinker": "kvi_engine.graph.linker",
    "FingerprintMismatch": "kvi_engine.models.fingerprint", "UnsupportedRoPE": "kvi_engine.models.rope",
    **dict.fromkeys(["InjectionPlan", "build_plan"], "kvi_engine.plan.plan"),
}

__all__ = ["Capsule", "CapsuleFormatError", "Entity", "load_capsules", "load_entities", "save_capsules",
           "save_entities", "KVBank", "FormatError", "BankFormatError", "add_capsules", "compile_bank",
           "recompile_entity", "QuantSpec", "DeviceKVCache", "FingerprintMismatch", "inject", "KVIEngine",
           "InjectionPlan", "build_plan", "UnsupportedRoPE", "KnowledgeGraph", "EntityLinker"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        try:  # a subpackage reached as an attribute (kvi.plan.plan) before anything imported it
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

