"""Thin entry point: the same as ``kvi bench attention [options]`` (code in kvi_engine/benchmarks/attention.py)."""
import sys

from kvi_engine.benchmarks.attention import main

if __name__ == "__main__":
    sys.exit(main())
