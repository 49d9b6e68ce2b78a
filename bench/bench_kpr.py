"""Thin entry point: the same as ``kvi bench kpr [options]`` (code in kvi_engine/benchmarks/kpr.py)."""
import sys

from kvi_engine.benchmarks.kpr import main

if __name__ == "__main__":
    sys.exit(main())
