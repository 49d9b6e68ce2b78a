"""Thin entry point: the same as ``kvi bench overhead [options]`` (code in kvi_engine/benchmarks/overhead.py)."""
import sys

from kvi_engine.benchmarks.overhead import main

if __name__ == "__main__":
    sys.exit(main())
