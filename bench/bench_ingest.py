"""Thin entry point: the same as ``kvi bench ingest [options]`` (code in kvi_engine/benchmarks/ingest.py)."""
import sys

from kvi_engine.benchmarks.ingest import main

if __name__ == "__main__":
    sys.exit(main())
