"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny Stable Diffusion models are built, once per session (or $ORTBIND_TEST_CACHE)."""
    shared = os.environ.get("ORTBIND_TEST_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("sd-cache")
