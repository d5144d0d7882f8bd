"""Folder helpers of the build tools: whole-folder writes (shared with the SD example), the side files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

from ..._folders import publish_atomically, require_missing_or_empty

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
