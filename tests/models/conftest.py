"""Fixtures for the models suite: tiny models want one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def single_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from intra-op threads and lose ~10x to their overhead on
    # shared cores; restore the setting for whatever runs after this package.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
