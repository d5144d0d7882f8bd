"""What the Stable Diffusion example's tests share: the command lines' pictures, HTTP on loopback, waiting, guards."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from examples.stable_diffusion.apps.cli import main as cli_main

from ..helpers import raises
from ..reference import REPO_ROOT, run_python

__all__ = ["REPO_ROOT", "raises", "run_python"]  # shared with the library's tests; re-exported for these

_T = TypeVar("_T")


def cli_images(out: Path, *args: str, command: str = "txt2img", cache_dir: Path | None = None) -> list[np.ndarray]:
    """The pictures ``python -m examples.stable_diffusion.<command> ARGS`` writes, as uint8 HWC arrays.

    Without ``--model`` in ``args`` the command runs the tiny models of ``cache_dir``.
    """
    cache = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    assert cli_main(command, [*cache, "--out", str(out), "--no-progress", *args]) == 0
    written = [out] if out.exists() else sorted(out.parent.glob(f"{out.stem}-*{out.suffix}"))
    return [png_array(path.read_bytes()) for path in written]


def cli_image(out: Path, *args: str, command: str = "txt2img", cache_dir: Path | None = None) -> np.ndarray:
    """The one picture the command writes (see :func:`cli_images`)."""
    (image,) = cli_images(out, *args, command=command, cache_dir=cache_dir)
    return image


def png_array(png: bytes) -> np.ndarray:
    """A PNG file's pixels, uint8 HWC RGB."""
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def sample_images(folder: Path, size: tuple[int, int] = (64, 64)) -> tuple[Path, Path]:
    """A picture (colour gradients) and a mask (white on the left half) as PNG files in ``folder``."""
    width, height = size
    across = np.linspace(0, 255, width, dtype=np.float32)
    down = np.linspace(0, 255, height, dtype=np.float32)
    picture = np.stack(
        [
            np.broadcast_to(across, (height, width)),
            np.broadcast_to(down[:, None], (height, width)),
            np.full((height, width), 96.0),
        ],
        -1,
    )
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 2] = 255
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / "picture.png", folder / "mask.png"
    Image.fromarray(picture.astype(np.uint8)).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def b64(path: Path) -> str:
    """A file's bytes as base64 text, as an HTTP body carries an image."""
    return base64.b64encode(path.read_bytes()).decode()


def loopback_opener() -> urllib.request.OpenerDirector:
    """urllib without proxies: requests go straight to 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, body: bytes | None = None, *, timeout: float = 300) -> tuple[int, Message, bytes]:
    """GET (no body) or POST JSON; the status, the headers (names case-insensitive) and the body."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST"
    )
    try:
        with loopback_opener().open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def post_json(url: str, body: object) -> tuple[int, Message, bytes]:
    """POST ``body`` as JSON (see :func:`http`)."""
    return http(url, json.dumps(body).encode())


def wait_until(condition: Callable[[], _T | None], *, timeout: float, what: str, every: float = 0.05) -> _T:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(every)


def rss_mib() -> float:
    """This process's resident memory."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def forbid_host_transfers(*, allow_tokens: int = 0) -> Iterator[list[str]]:
    """Make every tensor-to-host or numpy conversion raise inside the block; yields what was tried.

    Args:
        allow_tokens: Let ``tolist()`` of tensors of at most this many elements through (a decode
            loop's one new token per row, for streaming and stopping); everything else still raises.
    """
    attempts: list[str] = []
    patched: list[tuple[Any, str, Any]] = []

    def guard(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def refuse(*args: Any, **kwargs: Any) -> Any:
            what = f"{getattr(owner, '__name__', owner)}.{name}"
            if owner is torch.Tensor:
                what += f" of {tuple(args[0].shape)}"
            attempts.append(what)
            if name == "tolist" and owner is torch.Tensor and args[0].numel() <= allow_tokens:
                return original(*args, **kwargs)
            raise AssertionError(f"host transfer inside the loop: {what}")

        patched.append((owner, name, original))
        setattr(owner, name, refuse)

    for name in ("numpy", "cpu", "item", "tolist", "__array__"):
        guard(torch.Tensor, name)
    for name in ("asarray", "array", "ascontiguousarray"):
        guard(np, name)
    try:
        yield attempts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def optimum_layout(source: Path, target: Path, class_name: str) -> Path:
    """``source`` laid out as optimum's ``ORTDiffusionPipeline.save_pretrained`` writes it.

    Per-component ``config.json`` beside each ``model.onnx`` and a ``vae_encoder`` that outputs
    ``latent_parameters`` (both as our export already writes them), ``ORT…`` class names, and
    optimum's own component entries in ``model_index.json``; no safety checker entries.
    """
    shutil.copytree(source, target)
    index = json.loads((target / "model_index.json").read_text())
    entries = {
        "text_encoder": "ORTTextEncoder",
        "text_encoder_2": "ORTTextEncoder",
        "unet": "ORTUnet",
        "vae_encoder": "ORTVaeEncoder",
        "vae_decoder": "ORTVaeDecoder",
    }
    layout = {"_class_name": class_name, "_diffusers_version": index["_diffusers_version"]}
    layout |= {name: ["optimum", cls] for name, cls in entries.items() if (target / name).is_dir()}
    layout |= {key: index[key] for key in ("scheduler", "tokenizer", "tokenizer_2") if key in index}
    layout |= {k: v for k, v in index.items() if k.startswith(("force_zeros", "requires_aesthetics"))}
    (target / "model_index.json").write_text(json.dumps(layout, indent=2))
    for name in entries:
        if (target / name).is_dir():
            assert (target / name / "config.json").is_file()
    assert onnx.load(str(target / "vae_encoder" / "model.onnx"), load_external_data=False).graph.output[0].name == (
        "latent_parameters"
    )
    return target
