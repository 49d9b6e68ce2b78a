"""Thin entry point: the same as ``kvi bench fidelity [options]`` (code in kvi_engine/benchmarks/fidelity.py)."""
import sys

from kvi_engine.benchmarks.fidelity import main

if __name__ == "__main__":
    sys.exit(main())
