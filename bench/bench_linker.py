"""Thin entry point: the same as ``kvi bench linker [options]`` (code in kvi_engine/benchmarks/linker.py)."""
import sys

from kvi_engine.benchmarks.linker import main

if __name__ == "__main__":
    sys.exit(main())
