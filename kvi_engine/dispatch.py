"""The one dispatch point: which implementation (PyTorch reference, C++, Triton) runs each op.

Every op registers its implementations here with an availability probe. Automatic choice takes the first
available backend in ``PREFERENCE`` and falls back silently (the reference is always available). An explicitly
requested backend -- the ``backend=`` argument, ``KVI_BACKEND_<OP>`` or ``KVI_BACKEND`` -- that cannot run raises
:class:`BackendUnavailable` instead of quietly running something else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

PREFERENCE = ("triton", "cpp", "reference")


class BackendUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class _Impl:
    fn: Callable
    available: Callable[[], bool]
    auto: Callable[[], bool]
    why_not: str


_REGISTRY: dict[str, dict[str, _Impl]] = {}


def register(op: str, backend: str, fn: Callable, available: Callable[[], bool] = lambda: True,
             why_not: str = "", auto: Callable[[], bool] | None = None) -> None:
    """``available``: can run if asked for; ``auto``: worth choosing automatically (defaults to ``available``;
    Triton under the CPU interpreter is available but never chosen automatically -- it is for correctness only)."""
    if backend not in PREFERENCE:
        raise ValueError(f"unknown backend {backend!r}; expected one of {PREFERENCE}")
    _REGISTRY.setdefault(op, {})[backend] = _Impl(fn, available, auto or available, why_not)


def requested_backend(op: str, backend: str | None = None) -> str | None:
    """``backend`` argument, else ``KVI_BACKEND_<OP>`` (strict), else ``KVI_BACKEND`` -- which applies only to the
    ops that have that backend, so ``KVI_BACKEND=triton`` does not break ops with no Triton implementation."""
    name = backend or os.environ.get(f"KVI_BACKEND_{op.upper().replace('.', '_')}")
    if not name:
        name = os.environ.get("KVI_BACKEND")
        if name and name not in _REGISTRY.get(op, {}):
            name = None
    if name in (None, "", "auto"):
        return None
    if name not in PREFERENCE:
        raise ValueError(f"backend {name!r} for op {op!r} is not one of {PREFERENCE} (or 'auto')")
    return name


def select(op: str, backend: str | None = None, prefer: str | None = None) -> tuple[str, Callable]:
    """Return ``(backend_name, fn)`` for ``op``; explicit requests that cannot run raise. ``prefer`` (from the op,
    knowing its call) puts one backend first in the automatic choice; it never overrides an explicit request."""
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    want = requested_backend(op, backend)
    if want is not None:
        impl = impls.get(want)
        if impl is None:
            raise BackendUnavailable(f"op {op!r} has no {want!r} backend (has: {sorted(impls)})")
        if not impl.available():
            raise BackendUnavailable(f"backend {want!r} for op {op!r} cannot run here: {impl.why_not or 'unavailable'}")
        return want, impl.fn
    for name in ((prefer,) if prefer else ()) + PREFERENCE:
        impl = impls.get(name)
        if impl is not None and impl.auto():
            return name, impl.fn
    raise BackendUnavailable(f"no backend of op {op!r} can run here")


def backends(op: str) -> dict[str, bool]:
    """Registered backends of ``op`` and whether each can run here (for tests, benchmarks and `kvi inspect`)."""
    return {name: impl.available() for name, impl in _REGISTRY.get(op, {}).items()}


def core_has(name: str) -> bool:
    """Whether the native extension ``kvi_engine._core`` builds and exports ``name`` (a C++ backend's probe)."""
    try:
        from kvi_engine import _core
    except ImportError:
        return False
    return hasattr(_core, name)


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def triton_runnable() -> bool:
    """Triton kernels launch on a CUDA device, or on the CPU under TRITON_INTERPRET=1 (correctness only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return cuda_available() or os.environ.get("TRITON_INTERPRET") == "1"
