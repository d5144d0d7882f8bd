"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One tiny Stable Diffusion build per run, shared by every module and the namespaced child run.

    The SD tests read ``$ORTBIND_TEST_CACHE``; unless the caller chose one, it is a fresh folder
    removed at the end, so each run still builds from scratch once (about 30 s), not once per module.
    """
    if not os.environ.get("ORTBIND_TEST_CACHE"):
        config.stash[_OWN_CACHE] = os.environ["ORTBIND_TEST_CACHE"] = tempfile.mkdtemp(prefix="ortbind-sd-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_CACHE, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)
        del os.environ["ORTBIND_TEST_CACHE"]


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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny Stable Diffusion models are built, once per session (or $ORTBIND_TEST_CACHE)."""
    shared = os.environ.get("ORTBIND_TEST_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("sd-cache")
