"""Thin entry point: the same as ``kvi bench retrieval [options]`` (code in kvi_engine/benchmarks/retrieval.py)."""
import sys

from kvi_engine.benchmarks.retrieval import main

if __name__ == "__main__":
    sys.exit(main())
