"""Shared pytest fixtures (the helpers themselves live in :mod:`clfast.testing`)."""

from __future__ import annotations

import pytest

from clfast.testing.cases import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
