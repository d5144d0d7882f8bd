"""Assertion helpers shared by the test modules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import ortbind


@contextmanager
def raises(
    error: type[Exception], message: str, *, kind: str | None = None, name: str | None = None
) -> Iterator[pytest.ExceptionInfo[Exception]]:
    """``pytest.raises`` matching the whole message exactly; with ``kind``/``name``, the error's subject too."""
    with pytest.raises(error, match=f"^{re.escape(message)}$") as info:
        yield info
    if kind is not None or name is not None:
        assert isinstance(info.value, ortbind.OrtbindError)
        assert (info.value.kind, info.value.name) == (kind, name)
