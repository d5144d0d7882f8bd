"""What the pipelines read from a session's declared inputs: dtypes and fixed dims."""

from __future__ import annotations

import torch

import ortbind

__all__ = ["fixed_dim", "input_dtype"]


def input_dtype(session: ortbind.TorchSession, name: str) -> torch.dtype:
    """The torch dtype of input ``name``, which the pipeline must feed (never assumed).

    Raises:
        ValueError: The model has no such input, or its type has no torch dtype.
    """
    try:
        dtype = session.spec.input(name).dtype
    except KeyError:
        names = ", ".join(s.name for s in session.inputs)
        raise ValueError(f"{session.path}: expected an input {name!r}, found {names}") from None
    if dtype is None:
        raise ValueError(f"{session.path}: input {name!r} has no torch dtype")
    return dtype


def fixed_dim(session: ortbind.TorchSession, name: str, axis: int, default: int) -> int:
    """Input ``name``'s size on ``axis`` when the model fixes it, else ``default``."""
    dims = session.spec.input(name).dims
    if dims is not None and len(dims) > axis and isinstance(dims[axis], int):
        return int(dims[axis])  # type: ignore[arg-type]
    return default
