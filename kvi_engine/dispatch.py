"""The one dispatch point: which implementation of each op runs, on which device.

Every implementation registers here with the devices it runs on and an availability probe. Backends:

- ``reference``: the PyTorch / pure-Python twin in float32 -- the oracle every other backend is tested against;
- ``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` (attention ops only);
- ``cpp``: the native core ``kvi_engine._core`` (CPU);
- ``triton``: Triton kernels (CUDA; on the CPU only under ``TRITON_INTERPRET=1``, for correctness).

Automatic choice takes the op's preferred backend for the call (``prefer``), then :data:`PREFERENCE` order: the
first that is worth choosing automatically and runs on the tensors' device. An explicitly requested backend -- the
``backend=`` argument, ``KVI_BACKEND_<OP>`` or ``KVI_BACKEND`` -- that cannot run raises
:class:`BackendUnavailable` saying why, instead of quietly running something else. Torch-free, so graph and
linker code can use it without loading PyTorch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

PREFERENCE = ("triton", "cpp", "sdpa", "reference")
ANY = None  # an implementation that runs wherever its tensors are


class BackendUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Impl:
    fn: Callable
    devices: Callable[[], tuple[str, ...] | None]  # device types it runs on; None: any
    available: Callable[[], bool]
    auto: Callable[[], bool]
    why_not: str | Callable[[], str]

    def reason(self) -> str:
        return (self.why_not() if callable(self.why_not) else self.why_not) or "unavailable"

    def runs_on(self, device: str) -> bool:
        devices = self.devices()
        return devices is None or device in devices


_REGISTRY: dict[str, dict[str, Impl]] = {}


def device_type(device) -> str:
    """``"cpu"`` / ``"cuda"`` / ... of a ``torch.device``, a tensor's device or a string like ``"cuda:1"``."""
    if device is None:
        return "cpu"
    return str(getattr(device, "type", device)).split(":")[0]


def register(op: str, backend: str, fn: Callable, *, devices=("cpu",), available: Callable[[], bool] = lambda: True,
             why_not: str | Callable[[], str] = "", auto: Callable[[], bool] | None = None) -> None:
    """``devices``: device types (a tuple, :data:`ANY`, or a callable returning either: Triton's depend on the
    interpreter); ``available``: can run if asked for; ``auto``: worth choosing automatically (defaults to
    ``available``; Triton under the interpreter is available but never chosen automatically)."""
    if backend not in PREFERENCE:
        raise ValueError(f"unknown backend {backend!r}; expected one of {PREFERENCE}")
    devs = devices if callable(devices) else (lambda d=devices: d)
    _REGISTRY.setdefault(op, {})[backend] = Impl(fn, devs, available, auto or available, why_not)


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


def select(op: str, backend: str | None = None, *, device="cpu", prefer: str | None = None) -> tuple[str, Callable]:
    """``(backend_name, fn)`` of ``op`` for tensors on ``device``. ``prefer`` (from the op, knowing its call) puts
    one backend first in the automatic choice; it never overrides an explicit request."""
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    dev = device_type(device)
    want = requested_backend(op, backend)
    if want is not None:
        impl = impls.get(want)
        if impl is None:
            raise BackendUnavailable(f"op {op!r} has no {want!r} backend (has: {sorted(impls)})")
        if not impl.available():
            raise BackendUnavailable(f"backend {want!r} for op {op!r} cannot run here: {impl.reason()}")
        if not impl.runs_on(dev):
            raise BackendUnavailable(f"backend {want!r} for op {op!r} cannot run on {dev} tensors "
                                     f"(runs on: {', '.join(impl.devices() or ('any',))})")
        return want, impl.fn
    for name in ((prefer,) if prefer else ()) + PREFERENCE:
        impl = impls.get(name)
        if impl is not None and impl.auto() and impl.runs_on(dev):
            return name, impl.fn
    raise BackendUnavailable(f"no backend of op {op!r} runs on {dev} tensors")


def backends(op: str) -> dict[str, bool]:
    """Registered backends of ``op`` and whether each can run here (for tests, benchmarks and `kvi bank inspect`)."""
    return {name: impl.available() for name, impl in _REGISTRY.get(op, {}).items()}


def ops() -> list[str]:
    return sorted(_REGISTRY)


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


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runnable() -> bool:
    """Triton kernels launch on a CUDA device, or on the CPU under TRITON_INTERPRET=1 (correctness only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return cuda_available() or triton_interpreted()


def triton_why_not() -> str:
    from kvi_engine.utils.extras import installed

    if not installed("triton"):
        return "Triton is not installed: pip install 'kvi-engine[triton]'"
    return "Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for CPU correctness runs)"


def triton_devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if triton_interpreted() else ("cuda",)
