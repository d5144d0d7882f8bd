"""Where tensors lie in memory, and whether a call's buffers overlap what it reads.

ORT may write an output while it still reads an input: an output over an input's memory (or over
another output's) gives wrong results even where the sizes fit. Also where a bound input may grow
(``BoundCall.resize``) within its storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ._typecheck import shape_of
from .errors import OutputError, ShapeError

__all__ = ["Span", "check_no_overlap", "extent", "fits_storage", "overlaps", "resize_shape", "spans"]


def _span(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def extent(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes a tensor of any strides reaches, first to last element (a caller's input bound as a copy
    is still the caller's memory: an ``out=`` buffer over it is written while the caller reads it)."""
    low = high = 0
    for size, stride in zip(tensor.shape, tensor.stride()):
        reach = (size - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    start, size = tensor.data_ptr(), tensor.element_size()
    return start + low * size, start + (high + 1) * size


Span = tuple[int, int, torch.device]
"""Where a tensor's memory lies: ``(start, end, device)``."""


def spans(tensors: Iterable[torch.Tensor]) -> tuple[Span, ...]:
    """The spans of the non-empty ``tensors`` (for :func:`overlaps`, made once for many checks)."""
    return tuple((*_span(t), t.device) for t in tensors if t.numel())


def overlaps(tensor: torch.Tensor, start: int, end: int, others: Sequence[Span]) -> bool:
    """Whether memory ``[start, end)`` of ``tensor``'s device overlaps any of the spans ``others``."""
    for low, high, device in others:  # noqa: SIM110  (a loop: any() over a generator costs more here)
        if start < high and low < end and device == tensor.device:
            return True
    return False


def check_no_overlap(
    outs: Iterable[tuple[str, torch.Tensor]], inputs: Iterable[tuple[str, torch.Tensor]], label: str = "out"
) -> None:
    """Raise if an ``out=`` buffer (or a shared input, ``label="share"``) shares memory with another one or an input.

    ORT may write an output while it still reads an input, so an aliased buffer gives wrong
    results even where the sizes fit.
    """
    # Where each lies, worked out once (a call with shared KV buffers compares every pair).
    placed = [("out", n, t.device, *_span(t)) for n, t in outs if t.numel()]
    count = len(placed)
    placed += [("input", n, t.device, *(_span(t) if t.is_contiguous() else extent(t))) for n, t in inputs if t.numel()]
    for i, (_, name, device, lo, hi) in enumerate(placed[:count]):
        for kind, other_name, other_device, olo, ohi in placed[i + 1 :]:
            if other_device != device:
                continue
            if lo < ohi and olo < hi:
                raise OutputError(
                    f"{label} {name!r}: buffer overlaps {kind} {other_name!r} in memory; "
                    f"outputs need memory of their own, pass a separate tensor",
                    kind="out" if label == "out" else "output",
                    name=name,
                )


def fits_storage(name: str, tensor: torch.Tensor, shape: Sequence[int]) -> int:
    """For ``BoundCall.resize``: the end of ``shape`` from ``tensor``'s place in its storage (base +
    offset: an empty tensor's ``data_ptr()`` is null); a ShapeError naming input ``name`` if the
    storage ends sooner."""
    count = tensor.element_size()
    for size in shape:
        count *= size
    storage = tensor.untyped_storage()
    address = storage.data_ptr() + int(tensor.storage_offset()) * tensor.element_size()
    room = storage.data_ptr() + storage.nbytes() - address
    if count > room:
        raise ShapeError(
            f"resize {name!r}: shape {tuple(shape)} needs {count} bytes from where the input is bound, but its "
            f"storage holds {room} from there; bind a tensor of a larger buffer first",
            kind="input",
            name=name,
        )
    return address + count


def resize_shape(name: str, dims: object) -> torch.Size:
    """For ``BoundCall.resize``: the shape asked for input ``name``, read once; a ShapeError if it is not one."""
    return torch.Size(shape_of(dims, f"resize {name!r}", "input", name))
