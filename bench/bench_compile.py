"""Thin entry point: the same as ``kvi bench compile [options]`` (code in kvi_engine/benchmarks/compile.py)."""
import sys

from kvi_engine.benchmarks.compile import main

if __name__ == "__main__":
    sys.exit(main())
