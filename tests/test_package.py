import importlib
import sys


def test_import_without_gpu_and_kernels_namespace():
    import kvi_engine
    import kvi_engine.kernels  # noqa: F401

    assert kvi_engine._core.__version__ == kvi_engine.__version__
    # Hugging Face owns the top-level name `kernels`; we must never install one.
    assert "kernels" not in sys.modules or not sys.modules["kernels"].__file__.startswith(kvi_engine.__path__[0])
    assert importlib.util.find_spec("kernels") is None or "kvi_engine" not in str(importlib.util.find_spec("kernels").origin)
