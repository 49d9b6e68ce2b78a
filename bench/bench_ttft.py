"""Thin entry point: the same as ``kvi bench ttft [options]`` (code in kvi_engine/benchmarks/ttft.py)."""
import sys

from kvi_engine.benchmarks.ttft import main

if __name__ == "__main__":
    sys.exit(main())
