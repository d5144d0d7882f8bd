"""Folder helpers shared by the build tools: write a folder whole or not at all, copy the side files."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["SIDE_FILES", "copy_side_files", "publish_atomically", "require_missing_or_empty"]

# What a model folder carries beside its weights: the model's config, its generation defaults and
# the tokenizer, in whichever of its formats the source folder has.
SIDE_FILES: Final = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def require_missing_or_empty(path: Path) -> None:
    """Raise ``FileExistsError`` unless ``path`` is missing or an empty folder."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"output folder {path} already exists and is not empty; remove it or pick a new path")


@contextlib.contextmanager
def publish_atomically(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``target`` that replaces ``target`` only on success.

    A rename is atomic within one filesystem, so readers see either no folder or a whole one.

    Raises:
        FileExistsError: ``target`` is not empty, or was filled by someone else in the meantime.
    """
    require_missing_or_empty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700); the result is an ordinary shared folder.
        staging.chmod(0o755)
        try:
            staging.replace(target)
        except OSError as error:
            if target.is_dir() and any(target.iterdir()):
                raise FileExistsError(f"{target} was written by another process meanwhile") from error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_side_files(source: Path, destination: Path, *, overwrite: bool = True) -> list[str]:
    """Copy the :data:`SIDE_FILES` that ``source`` has into ``destination``.

    Args:
        source: A transformers model folder.
        destination: The export folder.
        overwrite: Replace files ``destination`` already has; when ``False`` they are kept.

    Returns:
        The names copied.
    """
    copied = []
    for name in SIDE_FILES:
        if (source / name).is_file() and (overwrite or not (destination / name).exists()):
            shutil.copyfile(source / name, destination / name)
            copied.append(name)
    return copied
