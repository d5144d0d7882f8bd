"""What kind of object the caller passed, told by its type.

``isinstance`` also believes an object's ``__class__`` attribute, which a property can set to
anything: an object claiming ``torch.Tensor`` or ``dict`` that way passed ``isinstance`` and failed
later inside torch with a raw ``AttributeError``. Every check of a caller's object goes through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

import torch

__all__ = ["is_mapping", "is_tensor"]


def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value``'s type is ``torch.Tensor`` or a subclass of it."""
    return issubclass(type(value), torch.Tensor)


def is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """Whether ``value``'s type is a ``Mapping`` (registered or derived)."""
    return issubclass(type(value), Mapping)
