"""Where the tiny decoders live: a cache folder keyed by what built them, filled atomically.

``ensure_tiny_decoder(layout=..., kind=...)`` returns the ONNX folder of a tiny decoder (see
:mod:`.tiny`) in one of the export layouts (see :mod:`.export`), building the transformers folder
and exporting it on first use. Folder names carry a key derived from the source of the modules
that build and export them and from the versions of the libraries that do it, so a folder written
by other code is never silently reused: it is not found, and a fresh one is built beside it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..._folders import build_key, default_cache_dir
from .export import Layout, export_decoder
from .tiny import TinyKind, build_tiny_decoder

__all__ = ["default_cache_dir", "ensure_tiny_decoder", "tiny_cache_key", "tiny_source_dir"]

# What decides the folders' bytes: these modules' source and these libraries' versions.
_KEYED_MODULES: Final = ("tiny.py", "export.py", "_files.py")
_KEYED_DISTRIBUTIONS: Final = (
    "torch",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxscript",
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
)


def tiny_cache_key() -> str:
    """A short hash of what builds the tiny decoders; part of their folder names."""
    here = Path(__file__).resolve().parent
    return build_key((here / name for name in _KEYED_MODULES), _KEYED_DISTRIBUTIONS)


def tiny_source_dir(cache_dir: str | Path | None = None, *, kind: TinyKind = "llama") -> Path:
    """Return the transformers folder of a tiny decoder (seed 0), building it if missing.

    Its exports hold the same weights: load it with ``AutoModelForCausalLM`` to compare.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"textgen-{kind}-transformers-{tiny_cache_key()}"
    _build_unless_present(target, "model.safetensors", lambda: build_tiny_decoder(target, kind=kind, seed=0))
    return target


def ensure_tiny_decoder(
    cache_dir: str | Path | None = None, *, layout: Layout = "optimum", kind: TinyKind = "llama"
) -> Path:
    """Return a tiny random-weight decoder's ONNX folder, building it if missing.

    The transformers folder goes to ``<cache>/textgen-<kind>-transformers-<key>`` and the export to
    ``<cache>/textgen-<kind>-<layout>-<key>``, ``<key>`` being :func:`tiny_cache_key`. Each is
    written beside its final place and moved in whole, so an interrupted build leaves nothing
    half-done; of two processes building at once, the first folder to land is kept.

    Args:
        cache_dir: Folder for the models; defaults to :func:`default_cache_dir`.
        layout: ``"optimum"``, ``"genai"`` (needs onnxruntime-genai) or ``"torch"``.
        kind: ``"llama"``, ``"llama-small"`` or ``"gpt2"`` (genai's builder has no GPT-2).

    Returns:
        The ONNX folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"textgen-{kind}-{layout}-{tiny_cache_key()}"
    if not (target / "model.onnx").is_file():
        print(
            f"Building the tiny random-weight {kind} decoder ({layout} layout) in {cache} (it babbles)", file=sys.stderr
        )
        source = tiny_source_dir(cache, kind=kind)
        _build_unless_present(target, "model.onnx", lambda: export_decoder(source, target, layout=layout))
    return target


def _build_unless_present(target: Path, marker: str, build: Callable[[], object]) -> None:
    # Folders only appear whole (see _files.publish_atomically), so one file marks a complete one.
    if (target / marker).is_file():
        return
    if target.exists():
        # Left by hand or by a build that wrote in place; never by an interrupted build, which
        # only leaves hidden .partial- siblings behind.
        shutil.rmtree(target)
    try:
        build()
    except FileExistsError:
        if not (target / marker).is_file():
            raise
