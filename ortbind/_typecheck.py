"""What kind of object the caller passed, told by its type; names made plain strings, dims shapes.

``isinstance`` also believes an object's ``__class__`` attribute, which a property can set to
anything: an object claiming ``torch.Tensor`` or ``dict`` that way passed ``isinstance`` and failed
later inside torch with a raw ``AttributeError``. Every check of a caller's object goes through here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeGuard

import torch

from .errors import ShapeError

_INT64: Final = 1 << 63

__all__ = ["as_shape", "is_mapping", "is_tensor", "named", "plain_str", "shape_of"]


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
        name = key if type(key) is str else plain_str(key)
        if name is None:
            raise error(f"{what}: expected names (str) as keys, got {type(key).__name__} {key!r}", key)
        result[name] = value
    return result


def as_shape(dims: object) -> tuple[int, ...] | None:
    """``dims`` as a tuple of ints in ``[0, 2**63)`` (numpy and torch ints accepted), or ``None``."""
    if type(dims) is tuple:  # the common case, without a generator (resolve_shapes is in decoder loops)
        for dim in dims:
            if type(dim) is not int or not 0 <= dim < _INT64:
                break
        else:
            return dims
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence | torch.Size):
        return None
    shape = []
    for dim in dims:
        if isinstance(dim, bool):
            return None
        try:
            size = operator.index(dim)
        except TypeError:
            return None
        if size < 0 or size >= 1 << 63:
            return None
        shape.append(size)
    return tuple(shape)


def shape_of(dims: object, where: str, kind: str, name: str) -> tuple[int, ...]:
    """``dims`` as a shape (:func:`as_shape`), read once; a :class:`~ortbind.ShapeError` saying ``where``
    expected one, naming ``name``, if it is not one."""
    shape = as_shape(dims)
    if shape is None:
        raise ShapeError(f"{where}: expected a sequence of ints in [0, 2**63), got {dims!r}", kind=kind, name=name)
    return shape
