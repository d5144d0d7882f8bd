"""Writing model folders whole: a reader sees no folder or a complete one, never half of one."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["publish_atomically", "require_missing_or_empty"]


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
