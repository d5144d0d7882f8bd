"""Shared by the web page and server tests: the tiny model, free ports, the CLI's images."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from examples.stable_diffusion.txt2img import main as txt2img_main


def tiny_cache_dir(tmp_path_factory: Any) -> Path:
    """``$ORTBIND_TEST_CACHE`` if set (the namespaced child run gets its parent's), else a fresh folder."""
    shared = os.environ.get("ORTBIND_TEST_CACHE")
    return Path(shared) if shared else Path(tmp_path_factory.mktemp("sd-cache"))


def free_port() -> int:
    """A port nobody listens on at the moment, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_image(cache_dir: Path, out: Path, *args: str, read: Path | None = None) -> np.ndarray:
    """The picture ``python -m examples.stable_diffusion.txt2img ARGS`` writes, as uint8 HWC.

    ``read``: which file to read back, for a batch (``out-1.png``...); by default ``out``.
    """
    assert txt2img_main(["--cache-dir", str(cache_dir), "--out", str(out), "--no-progress", *args]) == 0
    with Image.open(read or out) as image:
        return np.asarray(image.convert("RGB"))


def loopback_opener() -> urllib.request.OpenerDirector:
    """urllib without proxies: requests go straight to 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))
