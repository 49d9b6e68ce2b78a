"""Thin entry point: the same as ``kvi bench bank-scale [options]`` (code in kvi_engine/benchmarks/bank_scale.py)."""
import sys

from kvi_engine.benchmarks.bank_scale import main

if __name__ == "__main__":
    sys.exit(main())
