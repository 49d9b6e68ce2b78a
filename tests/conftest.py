import pytest

from kvi_engine.testing.tiny import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
