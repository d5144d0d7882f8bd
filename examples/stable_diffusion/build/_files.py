"""Writing model folders whole: no folder or a complete one, never half of one (shared by both examples)."""

from __future__ import annotations

from ..._folders import publish_atomically, require_missing_or_empty

__all__ = ["publish_atomically", "require_missing_or_empty"]
