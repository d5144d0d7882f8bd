"""What kind of object the caller passed, told by its type; names made plain strings.

``isinstance`` also believes an object's ``__class__`` attribute, which a property can set to
anything: an object claiming ``torch.Tensor`` or ``dict`` that way passed ``isinstance`` and failed
later inside torch with a raw ``AttributeError``. Every check of a caller's object goes through here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import torch

__all__ = ["is_mapping", "is_tensor", "named", "plain_str"]


def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value``'s type is ``torch.Tensor`` or a subclass of it."""
    return issubclass(type(value), torch.Tensor)


def is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """Whether ``value``'s type is a ``Mapping`` (registered or derived)."""
    return issubclass(type(value), Mapping)


def plain_str(value: object) -> str | None:
    """``value`` as a plain ``str`` if its type is ``str`` or a subclass (the subclass's ``__hash__``,
    ``__eq__`` and ``__str__`` are not run), else ``None``."""
    if type(value) is str:
        return value
    if issubclass(type(value), str):
        return str.__str__(value)
    return None


def named(pairs: Mapping[Any, Any], what: str, error: Callable[[str, object], Exception]) -> dict[str, Any]:
    """``pairs`` read once into a dict keyed by plain ``str`` names; ``error(message, key)`` for a key that is not one.

    A ``str`` subclass's ``__hash__`` or ``__eq__`` would run whenever the key is looked up, which a
    call does after binding tensors: code of the caller's that could free them. Plain strings run none.
    """
    result: dict[str, Any] = {}
    for key, value in pairs.items():
        name = plain_str(key)
        if name is None:
            raise error(f"{what}: expected names (str) as keys, got {type(key).__name__} {key!r}", key)
        result[name] = value
    return result
