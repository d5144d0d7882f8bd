"""Read a model's inputs and outputs with the ``onnx`` package into frozen specs.

The model is parsed once, without its external weight files (``load_external_data=False``):
ONNX Runtime loads weights itself, and ortbind needs only names, types and dims.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import onnx
import torch

from ._dtypes import element_type_name, from_onnx
from ._shapes import Dim, format_dims
from .errors import ModelError

__all__ = ["ModelSource", "ModelSpec", "TensorSpec", "load_model", "read_spec"]

ModelSource = Union[str, "os.PathLike[str]", bytes, onnx.ModelProto]
"""A model as a file path, serialized bytes, or an in-memory ``onnx.ModelProto``."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the model declares it.

    Attributes:
        name: The input or output name.
        elem_type: The ONNX element type int (``TensorProto.FLOAT16`` = 10); 0 for non-tensors.
        dtype: The torch dtype ortbind binds it with, or ``None`` when it cannot be bound.
        dims: Declared dims: ints, symbol or expression strings, ``None`` for an unnamed unknown
            dim; ``None`` as a whole when the rank is unknown.
        type_str: ONNX Runtime's spelling of the type, e.g. ``"tensor(float16)"``.
        unsupported: Why ortbind cannot bind it, or ``None`` if it can.
    """

    name: str
    elem_type: int
    dtype: torch.dtype | None
    dims: tuple[Dim, ...] | None
    type_str: str
    unsupported: str | None = None

    @property
    def elem_type_name(self) -> str:
        """The ONNX name of the element type, e.g. ``"FLOAT16"``."""
        return element_type_name(self.elem_type)

    @property
    def rank(self) -> int | None:
        """The declared rank, or ``None`` if unknown."""
        return None if self.dims is None else len(self.dims)

    def __str__(self) -> str:
        return f"{self.name}: {self.type_str} {format_dims(self.dims)}"


@dataclass(frozen=True)
class ModelSpec:
    """A model's interface: inputs and outputs in declaration order, plus provenance.

    Attributes:
        inputs: Inputs the caller feeds (initializer-backed graph inputs are left out).
        outputs: Graph outputs.
        opsets: Domain -> opset version.
        producer: ``producer_name producer_version`` as the file records it.
        ir_version: The ONNX IR version.
        overridable: Graph inputs with an initializer (a default the caller may override in ONNX
            Runtime); ortbind runs with the model's value.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opsets: tuple[tuple[str, int], ...]
    producer: str
    ir_version: int
    overridable: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``; raises ``KeyError`` if there is none."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``; raises ``KeyError`` if there is none."""
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class LoadedModel:
    """The parsed graph (weights not loaded) and what to hand ONNX Runtime."""

    proto: onnx.ModelProto
    ort_source: str | bytes
    path: Path | None


_ORT_FORMAT = b"ORTM"
"""Bytes 4 to 8 of a model in ONNX Runtime's own flatbuffer format (``.ort``)."""


def _ort_format(where: str, name: str | None) -> ModelError:
    return ModelError(
        f"{where}: an ONNX Runtime format (.ort) model, which ortbind cannot read (it reads the interface from "
        f"ONNX); pass the .onnx file it was made from, or wrap a session built from the .ort file with "
        f"TorchSession.from_session(session, model='model.onnx')",
        kind="model",
        name=name,
    )


def _not_a_file(path: Path) -> str:
    """What a path that is not a readable regular file is, for a message."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return "is not a regular file"
    if path.is_symlink():
        return "is a symbolic link to nothing (or a loop)"
    return "does not exist"


def load_model(source: ModelSource) -> LoadedModel:
    """Parse a model once, leaving external weight data on disk.

    Raises:
        ModelError: The file is missing or is not an ONNX model.
    """
    if isinstance(source, onnx.ModelProto):
        return LoadedModel(source, source.SerializeToString(), None)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf raises DecodeError and friends
            if data[4:8] == _ORT_FORMAT:
                raise _ort_format("model bytes", None) from exc
            raise ModelError(f"model bytes: not a serialized ONNX model ({exc})", kind="model") from exc
        if not proto.HasField("graph"):
            if data[4:8] == _ORT_FORMAT:
                raise _ort_format("model bytes", None)
            raise ModelError("model bytes: not a serialized ONNX model (it has no graph)", kind="model")
        return LoadedModel(proto, data, None)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long for the file system, say
            raise ModelError(f"model file {str(path)!r}: cannot be read ({exc})", kind="model", name=str(path)) from exc
        if not found:
            what = _not_a_file(path)
            raise ModelError(
                f"model file {str(path)!r} {what}; pass the path of a .onnx file", kind="model", name=str(path)
            )
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            if _head(path)[4:] == _ORT_FORMAT:
                raise _ort_format(f"model file {str(path)!r}", str(path)) from exc
            raise ModelError(
                f"model file {str(path)!r}: not an ONNX model ({exc})", kind="model", name=str(path)
            ) from exc
        if not proto.HasField("graph"):  # an empty file parses as an empty ModelProto
            raise ModelError(
                f"model file {str(path)!r}: not an ONNX model (it has no graph)", kind="model", name=str(path)
            )
        return LoadedModel(proto, str(path), path)
    raise ModelError(f"model: expected a path, bytes or onnx.ModelProto, got {type(source).__name__}", kind="model")


def _type_str(tp: onnx.TypeProto) -> str:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({element_type_name(tp.tensor_type.elem_type).lower()})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({element_type_name(tp.sparse_tensor_type.elem_type).lower()})"
    if kind == "sequence_type":
        return f"seq({_type_str(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        key = element_type_name(tp.map_type.key_type).lower()
        return f"map({key},{_type_str(tp.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_str(tp.optional_type.elem_type)})"
    return "unknown"


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        # ONNX Runtime reads a negative dim_value as "unknown", as it does a missing one.
        return dim.dim_value if dim.dim_value >= 0 else None
    if dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tp = value.type
    type_str = _type_str(tp)
    if tp.WhichOneof("value") is None:
        why = "the model does not declare its type (ortbind binds by declared type); declare it in the graph"
        return TensorSpec(value.name, 0, None, None, type_str, why)
    if tp.WhichOneof("value") != "tensor_type":
        return TensorSpec(value.name, 0, None, None, type_str, f"it is a {type_str}; ortbind binds dense tensors only")
    tensor = tp.tensor_type
    dims: tuple[Dim, ...] | None = None
    if tensor.HasField("shape"):
        dims = tuple(_dim(d) for d in tensor.shape.dim)
    row = from_onnx(tensor.elem_type)
    if row is None:
        why = f"its element type {element_type_name(tensor.elem_type)} has no torch dtype that ONNX Runtime can bind"
        return TensorSpec(value.name, tensor.elem_type, None, dims, type_str, why)
    return TensorSpec(value.name, tensor.elem_type, row.torch, dims, type_str)


def _head(path: Path) -> bytes:
    """The first 8 bytes of a file, or none if it cannot be read (the load's own error then speaks)."""
    try:
        with path.open("rb") as file:
            return file.read(8)
    except OSError:
        return b""


def read_spec(proto: onnx.ModelProto) -> ModelSpec:
    """The inputs and outputs the graph declares, as frozen specs.

    Raises:
        ModelError: A name in the graph is not UTF-8 (protobuf decodes names when they are read).
    """
    try:
        spec = _read_spec(proto)
    except UnicodeDecodeError as exc:
        raise ModelError(f"model: a name in its graph is not valid UTF-8 ({exc}); fix the model", kind="model") from exc
    for tensor in (*spec.inputs, *spec.outputs):
        if not isinstance(tensor.name, str):  # protobuf hands such a name over as bytes
            raise ModelError(
                f"model: the name {tensor.name!r} in its graph is not valid UTF-8; fix the model", kind="model"
            )
    return spec


def _read_spec(proto: onnx.ModelProto) -> ModelSpec:
    graph = proto.graph
    initialized = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = tuple(_tensor_spec(v) for v in graph.input if v.name not in initialized)
    # A graph may list one output twice; it is one value, returned once under its name.
    unique = {v.name: v for v in reversed(graph.output)}
    outputs = tuple(_tensor_spec(unique[name]) for name in dict.fromkeys(v.name for v in graph.output))
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    opsets = tuple((o.domain or "ai.onnx", o.version) for o in proto.opset_import)
    overridable = tuple(v.name for v in graph.input if v.name in initialized)
    return ModelSpec(inputs, outputs, opsets, producer, proto.ir_version, overridable)
