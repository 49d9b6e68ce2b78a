"""Thin entry point: ``kvi bench bank-accuracy [options]`` (code in kvi_engine/benchmarks/bank_accuracy.py)."""
import sys

from kvi_engine.benchmarks.bank_accuracy import main

if __name__ == "__main__":
    sys.exit(main())
