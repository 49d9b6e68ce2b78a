"""Thin entry point: the same as ``kvi bench serve [options]`` (code in kvi_engine/benchmarks/serve.py)."""
import sys

from kvi_engine.benchmarks.serve import main

if __name__ == "__main__":
    sys.exit(main())
