"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Tests marked ``loopback`` run inside a loopback-only network namespace (see tests/netns.py)."""
    from . import netns

    if item.get_closest_marker(netns.MARKER) is None or netns.loopback_only():
        return None
    return netns.report_from_namespace(item)
