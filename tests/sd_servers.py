"""Shared by the web page and server tests: the tiny model, free ports, the CLI's images."""

from __future__ import annotations

import base64
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from examples.stable_diffusion.img2img import main as img2img_main
from examples.stable_diffusion.inpaint import main as inpaint_main
from examples.stable_diffusion.txt2img import main as txt2img_main

_COMMANDS = {"txt2img": txt2img_main, "img2img": img2img_main, "inpaint": inpaint_main}


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


def cli_image(cache_dir: Path, out: Path, *args: str, read: Path | None = None, command: str = "txt2img") -> np.ndarray:
    """The picture ``python -m examples.stable_diffusion.<command> ARGS`` writes, as uint8 HWC.

    ``read``: which file to read back, for a batch (``out-1.png``...); by default ``out``.
    """
    main = _COMMANDS[command]
    assert main(["--cache-dir", str(cache_dir), "--out", str(out), "--no-progress", *args]) == 0
    with Image.open(read or out) as image:
        return np.asarray(image.convert("RGB"))


def loopback_opener() -> urllib.request.OpenerDirector:
    """urllib without proxies: requests go straight to 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sample_images(folder: Path) -> tuple[Path, Path]:
    """A 64x64 picture (colour gradients) and a mask (white on the left half) as PNG files in ``folder``."""
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    picture = np.stack(
        [np.broadcast_to(ramp, (64, 64)), np.broadcast_to(ramp[:, None], (64, 64)), np.full((64, 64), 96.0)], -1
    )
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / "picture.png", folder / "mask.png"
    Image.fromarray(picture.astype(np.uint8)).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def b64(path: Path) -> str:
    """A file's bytes as base64 text, as an HTTP body carries an image."""
    return base64.b64encode(path.read_bytes()).decode()
