"""Fixtures of the example tests: one built-in-model cache per run, the tiny decoders, and the loopback namespace."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .textgen import builds

__all__ = ["builds", "cache_dir", "digits_dir", "digits_inpaint_dir", "inpaint_dir", "sd_dir", "sdxl_dir"]

_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One build of each built-in Stable Diffusion model per run, shared by every module and the namespaced child run.

    The tests read ``$ORTBIND_TEST_CACHE``; unless the caller chose one, it is a fresh folder
    removed at the end, so each run still builds from scratch once (about 30 s a tiny kind, 40 s
    each digits export), not once per module.
    """
    if not os.environ.get("ORTBIND_TEST_CACHE"):
        config.stash[_OWN_CACHE] = os.environ["ORTBIND_TEST_CACHE"] = tempfile.mkdtemp(prefix="ortbind-sd-cache-")
    # Where the pages store uploads and pictures: a folder the tests can look into. Gradio reads it
    # when imported, so it is set here, before any test module imports it.
    if not os.environ.get("GRADIO_TEMP_DIR"):
        gradio = Path(os.environ["ORTBIND_TEST_CACHE"]) / "gradio"
        gradio.mkdir(exist_ok=True)
        os.environ["GRADIO_TEMP_DIR"] = str(gradio)


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_CACHE, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)
        del os.environ["ORTBIND_TEST_CACHE"]
        if os.environ.get("GRADIO_TEMP_DIR", "").startswith(own):
            del os.environ["GRADIO_TEMP_DIR"]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where the built-in Stable Diffusion models are built and exported, once per run: ``$ORTBIND_TEST_CACHE``."""
    return Path(os.environ["ORTBIND_TEST_CACHE"])


@pytest.fixture(scope="session")
def digits_dir(cache_dir: Path) -> Path:
    """The built-in digits model (the committed weights) as exported on first use: the default of every surface."""
    from examples.stable_diffusion.build.cache import ensure_digits_model

    return ensure_digits_model(cache_dir, kind="digits")


@pytest.fixture(scope="session")
def digits_inpaint_dir(cache_dir: Path) -> Path:
    """The built-in digits inpainting model as exported on first use: inpaint's default."""
    from examples.stable_diffusion.build.cache import ensure_digits_model

    return ensure_digits_model(cache_dir, kind="digits-inpaint")


@pytest.fixture(scope="session")
def sd_dir(cache_dir: Path) -> Path:
    """The tiny SD 1.x-like model (random weights, for shapes), in diffusers' layout (with each component's
    config.json, as we export it)."""
    from examples.stable_diffusion.build.cache import ensure_tiny_model

    return ensure_tiny_model(cache_dir, kind="sd")


@pytest.fixture(scope="session")
def inpaint_dir(cache_dir: Path) -> Path:
    """The tiny inpainting model (a 9-channel UNet; random weights, for shapes), in diffusers' layout."""
    from examples.stable_diffusion.build.cache import ensure_tiny_model

    return ensure_tiny_model(cache_dir, kind="inpaint")


@pytest.fixture(scope="session")
def sdxl_dir(cache_dir: Path) -> Path:
    """The tiny SDXL model (random weights, for shapes), in optimum's layout."""
    from examples.stable_diffusion.build.cache import ensure_tiny_model

    return ensure_tiny_model(cache_dir, kind="sdxl")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Tests marked ``loopback`` run inside a loopback-only network namespace (see netns.py)."""
    from . import netns

    if item.get_closest_marker(netns.MARKER) is None or netns.loopback_only():
        return None
    return netns.report_from_namespace(item)
