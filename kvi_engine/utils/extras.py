"""Optional dependencies: import one, or fail in one line that names the extra to install.

Heavy or specialised pieces are extras of the package (``pip install 'kvi-engine[<extra>]'``); a command that needs
one raises :class:`MissingExtra`, which the ``kvi`` command line prints as one line with exit status 2.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or raise :class:`MissingExtra`: "<what> needs <module>: pip install 'kvi-engine[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if isinstance(e, MissingExtra):
            raise
        top = module.split(".")[0]
        if e.name is not None and e.name != top and not e.name.startswith(top + "."):
            raise  # the module exists but one of *its* imports is broken: a real error, not a missing extra
        raise MissingExtra(f"{what} needs {top}: pip install 'kvi-engine[{extra}]'") from None


def installed(distribution: str) -> bool:
    """Whether a distribution is installed, without importing it (cheap; ``find_spec`` can be fooled by a folder
    of that name in the working directory)."""
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
