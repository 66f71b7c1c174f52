"""Spatial area: one torch thread for every module here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread):
    yield
