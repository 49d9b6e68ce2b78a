import os

import pytest

from kvi_engine.testing.tiny import FAMILIES

# tests/vllm/ runs in vLLM's own environment (bash tests/vllm/run.sh sets KVI_VLLM_TESTS=1); the main suite never
# collects it, so it never imports vLLM.
collect_ignore = [] if os.environ.get("KVI_VLLM_TESTS") == "1" else ["vllm"]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
