"""The one element-type table: ONNX element type int <-> torch dtype <-> numpy dtype <-> size.

Everything else in ortbind derives its dtype knowledge from :data:`ELEMENT_TYPES`. Rows whose torch
dtype does not exist in the installed torch (float8 on an old torch) are left out, so a lookup for
them fails with a clear message instead of binding the wrong width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import onnx
import torch

__all__ = ["ELEMENT_TYPES", "ElementType", "element_type_name", "from_onnx", "from_torch"]


@dataclass(frozen=True)
class ElementType:
    """One tensor element type as ONNX, torch and numpy know it.

    Attributes:
        onnx: The ONNX ``TensorProto.DataType`` int; ORT binds raw memory with this int.
        name: The ONNX name, e.g. ``"FLOAT16"``.
        torch: The torch dtype with the same bit layout.
        numpy: The numpy dtype with the same bit layout, or ``None`` where numpy has none
            (bfloat16, float8).
        itemsize: Bytes per element.
    """

    onnx: int
    name: str
    torch: torch.dtype
    numpy: np.dtype[np.generic] | None
    itemsize: int

    def __str__(self) -> str:
        return self.name


# ONNX TensorProto.DataType ints, spelled out so this table does not depend on the onnx version.
_ONNX_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "UNDEFINED",
        1: "FLOAT",
        2: "UINT8",
        3: "INT8",
        4: "UINT16",
        5: "INT16",
        6: "INT32",
        7: "INT64",
        8: "STRING",
        9: "BOOL",
        10: "FLOAT16",
        11: "DOUBLE",
        12: "UINT32",
        13: "UINT64",
        14: "COMPLEX64",
        15: "COMPLEX128",
        16: "BFLOAT16",
        17: "FLOAT8E4M3FN",
        18: "FLOAT8E4M3FNUZ",
        19: "FLOAT8E5M2",
        20: "FLOAT8E5M2FNUZ",
        21: "UINT4",
        22: "INT4",
        23: "FLOAT4E2M1",
        24: "FLOAT8E8M0",
        25: "UINT2",
        26: "INT2",
        27: "FLOAT6E2M3",
        28: "FLOAT6E3M2",
    }
)

# (onnx int, torch dtype attribute, numpy dtype name or None). COMPLEX64/128 are absent because
# ONNX Runtime registers no tensor type for them; the 4- and 2-bit types because torch has no
# dtype with their packed layout; STRING because torch holds no strings.
_ROWS: Final = (
    (1, "float32", "float32"),
    (2, "uint8", "uint8"),
    (3, "int8", "int8"),
    (4, "uint16", "uint16"),
    (5, "int16", "int16"),
    (6, "int32", "int32"),
    (7, "int64", "int64"),
    (9, "bool", "bool"),
    (10, "float16", "float16"),
    (11, "float64", "float64"),
    (12, "uint32", "uint32"),
    (13, "uint64", "uint64"),
    (16, "bfloat16", None),
    (17, "float8_e4m3fn", None),
    (18, "float8_e4m3fnuz", None),
    (19, "float8_e5m2", None),
    (20, "float8_e5m2fnuz", None),
    (24, "float8_e8m0fnu", None),
)


def _build_table() -> Mapping[int, ElementType]:
    table: dict[int, ElementType] = {}
    for onnx_int, torch_name, numpy_name in _ROWS:
        dtype = getattr(torch, torch_name, None)
        if not isinstance(dtype, torch.dtype):
            continue  # this torch predates the dtype
        table[onnx_int] = ElementType(
            onnx=onnx_int,
            name=_ONNX_NAMES[onnx_int],
            torch=dtype,
            numpy=np.dtype(numpy_name) if numpy_name else None,
            itemsize=dtype.itemsize,
        )
    return MappingProxyType(table)


ELEMENT_TYPES: Final[Mapping[int, ElementType]] = _build_table()
"""Every element type ortbind can bind, keyed by ONNX element type int."""

_BY_TORCH: Final[Mapping[torch.dtype, ElementType]] = MappingProxyType(
    {row.torch: row for row in ELEMENT_TYPES.values()}
)


def element_type_name(onnx_int: int) -> str:
    """The ONNX name of an element type int (``"FLOAT16"``), or ``"<n>"`` for an unknown int."""
    name = _ONNX_NAMES.get(onnx_int)
    if name is None:
        try:  # a type newer than this table: ask the installed onnx
            name = onnx.TensorProto.DataType.Name(onnx_int)
        except ValueError:
            name = f"<{onnx_int}>"
    return name


def from_onnx(onnx_int: int) -> ElementType | None:
    """The row for an ONNX element type int, or ``None`` if ortbind cannot bind that type."""
    return ELEMENT_TYPES.get(onnx_int)


def from_torch(dtype: torch.dtype) -> ElementType | None:
    """The row for a torch dtype, or ``None`` if no ONNX element type has its layout."""
    return _BY_TORCH.get(dtype)
