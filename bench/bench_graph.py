"""Thin entry point: the same as ``kvi bench graph [options]`` (code in kvi_engine/benchmarks/graph.py)."""
import sys

from kvi_engine.benchmarks.graph import main

if __name__ == "__main__":
    sys.exit(main())
