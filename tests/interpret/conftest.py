"""One torch thread for every module here (the toy fixtures are in tests/conftest.py)."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread):
    yield
