"""Where the tiny models live: a cache folder keyed by what built them, filled atomically.

``ensure_tiny_model(kind=...)`` returns the ONNX folder of a tiny model (see :mod:`.tiny`),
building the torch pipeline and exporting it on first use. The folder names carry a key derived
from the source of the modules that build and export the model and from the versions of the
libraries that do it, so a cache written by another version of this code is never silently reused:
it is simply not found, and a fresh one is built beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tiny import TinyKind

__all__ = [
    "default_cache_dir",
    "ensure_tiny_model",
    "quiet_libraries",
    "tiny_cache_key",
    "tiny_torch_pipeline_dir",
]

# What decides the tiny models' bytes: these modules' source and these libraries' versions.
_KEYED_MODULES = ("tiny.py", "export.py")
_KEYED_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "onnx", "onnxscript")


def default_cache_dir() -> Path:
    """Return ``$ORTBIND_CACHE`` if set, else ``~/.cache/ortbind``."""
    configured = os.environ.get("ORTBIND_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ortbind"


def tiny_cache_key() -> str:
    """A short hash of what builds the tiny models; part of their cache folder names."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _KEYED_MODULES:
        digest.update((here / name).read_bytes())
    for distribution in _KEYED_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{distribution}={version};".encode())
    return digest.hexdigest()[:12]


def _dirs(cache: Path, kind: TinyKind) -> tuple[Path, Path]:
    key = tiny_cache_key()
    return cache / f"tiny-{kind}-torch-{key}", cache / f"tiny-{kind}-onnx-{key}"


def ensure_tiny_model(cache_dir: str | Path | None = None, *, kind: TinyKind = "sd", progress: bool = False) -> Path:
    """Return a tiny random-weight model in ONNX layout, building it if missing.

    The torch pipeline goes to ``<cache>/tiny-<kind>-torch-<key>`` (seed 0) and its export to
    ``<cache>/tiny-<kind>-onnx-<key>`` (float32, opset 20), ``<key>`` being
    :func:`tiny_cache_key`. Each folder is written beside its final place and moved in whole, so
    an interrupted build leaves nothing half-done. Two processes building at once both finish; the
    first folder to land is kept.

    Args:
        cache_dir: Folder for the pipelines; defaults to :func:`default_cache_dir`.
        kind: ``"sd"``, ``"inpaint"`` or ``"sdxl"``.
        progress: Show the export progress bar.

    Returns:
        The ONNX folder.
    """
    # Imported here: they import torch and onnx, which a caller asking for a cached path does not need.
    from .export import export_onnx  # noqa: PLC0415
    from .tiny import build_tiny_pipeline  # noqa: PLC0415

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    torch_dir, onnx_dir = _dirs(cache, kind)
    if _is_pipeline_dir(onnx_dir) and _is_pipeline_dir(torch_dir):
        return onnx_dir

    print(
        f"Building the tiny random-weight {kind} model in {cache} (it makes noise, not art)",
        file=sys.stderr,
    )
    with quiet_libraries():
        if not _is_pipeline_dir(torch_dir):
            # The export would be of other weights than the ones the torch folder will hold.
            shutil.rmtree(onnx_dir, ignore_errors=True)
            _build_unless_present(torch_dir, lambda: build_tiny_pipeline(torch_dir, kind=kind, seed=0))
        if not _is_pipeline_dir(onnx_dir):
            _build_unless_present(onnx_dir, lambda: export_onnx(torch_dir, onnx_dir, progress=progress))
    return onnx_dir


def tiny_torch_pipeline_dir(cache_dir: str | Path | None = None, *, kind: TinyKind = "sd") -> Path:
    """Return the torch pipeline a tiny ONNX model was exported from, building both if missing.

    Load it with the diffusers torch pipeline of that kind to compare against the ONNX run on the
    same weights.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ensure_tiny_model(cache, kind=kind)
    return _dirs(cache, kind)[0]


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the notices the libraries print while the tiny model is built.

    The build is an internal step of the demo: the exporter's notes on skipped torchvision ops,
    its deprecation warnings and the loaders' progress bars say nothing to someone who asked for
    an image. Errors still propagate; only warnings and info output are held back.
    """
    import diffusers.utils.logging as diffusers_logging  # noqa: PLC0415  (lazy: see the module note)
    import transformers.utils.logging as transformers_logging  # noqa: PLC0415

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        transformers_logging.set_verbosity(verbosity)


def _is_pipeline_dir(path: Path) -> bool:
    # Folders only appear whole (see publish_atomically), so the index file marks a complete one.
    return (path / "model_index.json").is_file()


def _build_unless_present(target: Path, build: Callable[[], object]) -> None:
    if target.exists() and not _is_pipeline_dir(target):
        # Left by hand or by a build that wrote in place; never by an interrupted build, which
        # only leaves hidden .partial- siblings behind.
        shutil.rmtree(target)
    try:
        build()
    except FileExistsError:
        if not _is_pipeline_dir(target):
            raise
