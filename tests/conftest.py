"""Shared pytest settings and fixtures."""

import pytest
import torch

# The grid runner's test notebooks are fixtures of tests/test_grid.py, not notebooks to validate.
collect_ignore_glob = ["data/*.ipynb"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors gain nothing from intra-op threads; on a busy 2-core machine they only add
    contention. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
