"""What a bound call holds of each tensor it bound, and the check before every run that each is as bound.

A bound call runs many times on the addresses bound once; between runs the caller may re-point a
tensor (``.data =``, ``set_``, ``resize_``), resize its storage (FSDP frees parameters that way), or
free it and let torch's allocator hand the same address to a smaller block. The record kept here
tells each of these apart from a tensor that is still as it was bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._shapes import format_shape
from .errors import InputError, OutputError

__all__ = ["Held", "check_held", "check_subclassed", "hold", "moved"]

Held = tuple[
    Callable[[], int],
    Callable[[], int],
    Callable[[], int],
    int,
    int,
    int,
    torch.Size,
    torch.dtype,
    Callable[[], bool],
    torch.Tensor,
    torch.UntypedStorage,
    str,
    str,
]
"""What a bound call keeps of each tensor it bound, checked before every run: ``(tensor's data_ptr,
storage's data_ptr, storage's nbytes, address, storage base, reach, shape, dtype, tensor's
is_contiguous, tensor, storage, kind, name)``.

The first three and ``is_contiguous`` are torch's own C methods bound to the tensor and its storage (a Python override
or an attribute set on the instance cannot answer for them, and a bound method saves a lookup on
every run); ``reach`` is how many bytes from the storage's base the binding uses; ``shape`` and
``dtype`` are the tensor's when it was bound (it was contiguous then). See :func:`hold` and :func:`moved`.
"""

_TENSOR_DATA_PTR = torch._C.TensorBase.data_ptr
_STORAGE_DATA_PTR = torch._C.StorageBase.data_ptr  # type: ignore[attr-defined]
_STORAGE_NBYTES = torch._C.StorageBase.nbytes  # type: ignore[attr-defined]
_IS_CONTIGUOUS = torch._C.TensorBase.is_contiguous
_SHAPE: Any = torch._C.TensorBase.shape
_DTYPE: Any = torch._C.TensorBase.dtype


def hold(kind: str, name: str, tensor: torch.Tensor, end: int | None = None) -> Held:
    """Record a plain tensor as bound at its current address and shape, keeping its storage alive.

    Holding the storage object keeps the bound memory allocated even if the tensor is re-pointed
    (``.data =``, ``set_``), so torch's allocator cannot hand the same address to a smaller block;
    the storage's own base and size then tell whether it was resized in place. ``end``: the
    address the binding reaches (default: the tensor's end).
    """
    storage = tensor.untyped_storage()
    address = _TENSOR_DATA_PTR(tensor)
    base = _STORAGE_DATA_PTR(storage)
    reach = (address + tensor.nbytes if end is None else end) - base
    return (
        _TENSOR_DATA_PTR.__get__(tensor),
        _STORAGE_DATA_PTR.__get__(storage),
        _STORAGE_NBYTES.__get__(storage),
        address,
        base,
        reach,
        tensor.shape,
        tensor.dtype,
        _IS_CONTIGUOUS.__get__(tensor),
        tensor,
        storage,
        kind,
        name,
    )


def check_held(held: Sequence[Held]) -> None:
    """Raise :class:`~ortbind.InputError` or :class:`~ortbind.OutputError` if a held tensor is not as bound.

    Runs before every run of a bound call, for every tensor it holds: :func:`moved`'s tests,
    written out (a call per tensor would cost about 5% of a tiny run); :func:`moved` explains.
    """
    for record in held:
        data_ptr, storage_ptr, storage_size, address, base, reach, shape, dtype, contiguous, tensor, _, kind, name = (
            record
        )
        if (
            data_ptr() != address
            or storage_ptr() != base
            or storage_size() < reach
            or tensor.shape != shape
            or tensor.dtype is not dtype
            or not contiguous()
        ):
            raise (InputError if kind == "input" else OutputError)(
                f"{kind} {name!r}: {moved(record)}; write new values with copy_(), or rebind()",
                kind=kind,
                name=name,
            )


def moved(held: Held) -> str | None:
    """What happened to a held tensor that is no longer as it was bound, and what ORT would do (``None`` while it is).

    Cheap enough for every run of a bound call: three pointer-sized reads, the shape, the dtype and
    contiguity per tensor (a contiguous tensor of the same shape and address has the same layout).
    """
    tensor_address, storage_address, storage_size, address, base, reach, shape, dtype, _, tensor, _, _, _ = held
    # A storage shrunk below the binding first: it moves the tensor too, and is the better explanation.
    shrunk = storage_size() < reach
    if not shrunk and tensor_address() != address:
        return (
            f"the tensor bound for it moved to other memory since bind() (an in-place resize_, set_ or .data=; "
            f"now shape {format_shape(tensor.shape)}), so ORT would use a stale address"
        )
    if shrunk or storage_address() != base:
        return (
            f"the storage of the tensor bound for it was resized since bind() (untyped_storage().resize_; now "
            f"{storage_size()} bytes): the bound memory is gone, so ORT would use a stale address"
        )
    if tensor.shape != shape:
        return (
            f"the tensor bound for it changed shape in place since bind() (from {format_shape(shape)} to "
            f"{format_shape(tensor.shape)}: resize_, set_, .data= or t_()), so ORT would use the bound shape, "
            f"not the tensor's"
        )
    if tensor.dtype is not dtype:
        return (
            f"the tensor bound for it changed dtype in place since bind() (from {dtype} to {tensor.dtype}: "
            f".data= or set_), so ORT would read its bytes as {dtype}"
        )
    if not tensor.is_contiguous():
        return (
            f"the tensor bound for it is no longer contiguous (strides {tuple(tensor.stride())} since bind(): "
            f"t_(), as_strided_ or .data=), so ORT would read its memory in the bound row-major order"
        )
    return None


def check_subclassed(subclassed: Sequence[tuple[str, torch.Tensor, int, torch.Size, torch.dtype]]) -> None:
    """Raise if a subclass instance bound through a plain alias was re-pointed, reshaped, re-typed or
    transposed since bind() (read through torch's own descriptors, with its class's overrides off)."""
    for name, caller, address, shape, dtype in subclassed:
        with torch._C.DisableTorchFunctionSubclass():
            now = (
                _TENSOR_DATA_PTR(caller),
                _SHAPE.__get__(caller),
                _DTYPE.__get__(caller),
                _IS_CONTIGUOUS(caller),
            )
        if now != (address, shape, dtype, True):
            where = "the same address" if now[0] == address else "another address"
            layout = "contiguous" if now[3] else "not contiguous"
            raise InputError(
                f"input {name!r}: the tensor bound for it changed since it was bound (now at {where}, shape "
                f"{format_shape(now[1])}, {now[2]}, {layout}; bound: shape {format_shape(shape)}, {dtype}); "
                f"write new values with copy_(), or rebind()",
                kind="input",
                name=name,
            )
