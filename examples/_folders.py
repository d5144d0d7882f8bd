"""What both examples' build tools share: the model cache folder, keys of what built a folder, whole-folder writes.

A reader of a model folder sees no folder or a complete one, never half of one; a cached folder's
name carries a key of the code and library versions that built it, so a folder written by other
code is never silently reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["build_key", "default_cache_dir", "publish_atomically", "require_missing_or_empty"]


def default_cache_dir() -> Path:
    """Return ``$ORTBIND_CACHE`` if set, else ``~/.cache/ortbind``."""
    configured = os.environ.get("ORTBIND_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ortbind"


def build_key(sources: Iterable[Path], distributions: Iterable[str]) -> str:
    """A short hash of the ``sources`` files' bytes and the installed versions of ``distributions``."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    for distribution in distributions:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{distribution}={version};".encode())
    return digest.hexdigest()[:12]


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
