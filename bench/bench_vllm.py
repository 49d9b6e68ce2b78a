"""Thin entry point: the same as ``kvi bench vllm [options]`` (code in kvi_engine/benchmarks/vllm.py; run it with
vLLM's environment: ``bash tests/vllm/env.sh``, then ``.venv-vllm/bin/python bench/bench_vllm.py``)."""
import sys

from kvi_engine.benchmarks.vllm import main

if __name__ == "__main__":
    sys.exit(main())
