"""Where the built-in models' ONNX exports live: a cache folder keyed by what made them, filled atomically.

Two families of built-in models, both exported to ONNX on first use:

- ``ensure_digits_model(kind=...)``: the trained digits model committed in ``models/`` (see
  ``models/MODEL_CARD.md``), the default of the command lines, the page and the server. Its key
  hashes the committed weights too, so retrained weights are exported afresh.
- ``ensure_tiny_model(kind=...)``: a tiny model with random weights (see :mod:`.tiny`), built
  offline, for the shapes the digits model does not have (SDXL, SD's VAE factor 8) and for tests
  that compare pipelines with diffusers: its pictures are noise.

The folder names carry a key derived from the source of the modules that build and export the
model and from the versions of the libraries that do it, so a cache written by another version of
this code is never silently reused: it is simply not found, and a fresh one is built beside it.
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
from typing import TYPE_CHECKING, Final, Literal

from ..._folders import default_cache_dir

if TYPE_CHECKING:
    from .tiny import TinyKind

__all__ = [
    "DIGITS_KINDS",
    "MODELS_DIR",
    "DigitsKind",
    "default_cache_dir",
    "digits_cache_key",
    "ensure_digits_model",
    "ensure_tiny_model",
    "quiet_libraries",
    "tiny_cache_key",
    "tiny_torch_pipeline_dir",
]

MODELS_DIR: Final = Path(__file__).resolve().parents[1] / "models"
"""The committed diffusers folders of the trained digits model (``digits/``, ``digits-inpaint/``)."""
DigitsKind = Literal["digits", "digits-inpaint"]
DIGITS_KINDS: Final[tuple[DigitsKind, ...]] = ("digits", "digits-inpaint")

# What decides the exports' bytes: these modules' source (the digits model's: the exporter's only)
# and these libraries' versions.
_KEYED_MODULES = ("tiny.py", "export.py")
_KEYED_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "onnx", "onnxscript")


def tiny_cache_key() -> str:
    """A short hash of what builds the tiny models; part of their cache folder names."""
    return hashlib.sha256(_code_fingerprint(_KEYED_MODULES)).hexdigest()[:12]


def digits_cache_key(kind: DigitsKind = "digits") -> str:
    """A short hash of what makes the digits model's export: the code, the libraries and the committed files.

    The files are read through the inpainting folder's links, so a change to the shared VAE or
    text encoder changes both keys.
    """
    digest = hashlib.sha256(_code_fingerprint(("export.py",)))
    source = MODELS_DIR / kind
    # os.walk, not Path.rglob: before Python 3.13 rglob does not descend into linked folders.
    files = sorted(Path(root, name) for root, _, names in os.walk(source, followlinks=True) for name in names)
    for path in files:
        digest.update(f"{path.relative_to(source).as_posix()}:{path.stat().st_size};".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _code_fingerprint(modules: tuple[str, ...]) -> bytes:
    """These modules' source and the keyed libraries' versions."""
    here = Path(__file__).resolve().parent
    parts = [(here / name).read_bytes() for name in modules]
    for distribution in _KEYED_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        parts.append(f"{distribution}={version};".encode())
    return b"".join(parts)


def _dirs(cache: Path, kind: TinyKind) -> tuple[Path, Path]:
    key = tiny_cache_key()
    return cache / f"tiny-random-{kind}-torch-{key}", cache / f"tiny-random-{kind}-onnx-{key}"


def ensure_digits_model(
    cache_dir: str | Path | None = None, *, kind: DigitsKind = "digits", progress: bool = False
) -> Path:
    """Return the trained digits model in ONNX layout, exporting the committed weights if missing.

    The export (float32, opset 20) goes to ``<cache>/<kind>-onnx-<key>``, ``<key>`` being
    :func:`digits_cache_key`; it is written beside its final place and moved in whole. Nothing is
    trained: the weights are the ones committed in :data:`MODELS_DIR`.

    Args:
        cache_dir: Folder for the export; defaults to :func:`default_cache_dir`.
        kind: ``"digits"`` (text-to-image, image-to-image) or ``"digits-inpaint"`` (a 9-channel UNet).
        progress: Show the export progress bar.

    Returns:
        The ONNX folder.

    Raises:
        ValueError: ``kind`` is not one of :data:`DIGITS_KINDS`.
    """
    from .export import export_onnx  # noqa: PLC0415  (lazy: see ensure_tiny_model)

    if kind not in DIGITS_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(DIGITS_KINDS)}, got {kind!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    onnx_dir = cache / f"{kind}-onnx-{digits_cache_key(kind)}"
    if _is_pipeline_dir(onnx_dir):
        return onnx_dir
    print(f"Exporting the built-in {kind} model to ONNX in {cache} (once)", file=sys.stderr)
    with quiet_libraries():
        _build_unless_present(onnx_dir, lambda: export_onnx(MODELS_DIR / kind, onnx_dir, progress=progress))
    return onnx_dir


def ensure_tiny_model(cache_dir: str | Path | None = None, *, kind: TinyKind = "sd", progress: bool = False) -> Path:
    """Return a tiny random-weight model in ONNX layout, building it if missing: random weights, for shapes.

    The torch pipeline goes to ``<cache>/tiny-random-<kind>-torch-<key>`` (seed 0) and its export to
    ``<cache>/tiny-random-<kind>-onnx-<key>`` (float32, opset 20), ``<key>`` being
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
        f"Building the tiny random-weight {kind} model in {cache} (random weights, for shapes: it draws noise)",
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
    """Silence the notices the libraries print while a built-in model is exported.

    The export is an internal step of the demo: the exporter's notes on skipped torchvision ops,
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
