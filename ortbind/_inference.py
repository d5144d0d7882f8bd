"""Rule (c): ONNX shape inference on concrete input shapes.

A trimmed copy of the graph (the skeleton) is made once: large or external initializers, and
Constant nodes holding large tensors, become typed graph inputs, so no weight bytes are copied or
serialized per call, while small integer initializers (reshape targets, slice bounds) keep their
values for data propagation. Declared
output and intermediate shapes are cleared so a wrong declaration cannot veto the inference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Final

import onnx
import onnx.shape_inference

from ._shapes import Shape

__all__ = ["ShapeInferencer"]

_log = logging.getLogger("ortbind")

# Initializers at most this many elements, of an integer type, stay in the skeleton: they are the
# ones data propagation needs (shape tensors); float weights never decide a shape.
_KEEP_MAX_ELEMENTS: Final = 4096
_INTEGER_TYPES: Final = frozenset(
    {
        onnx.TensorProto.INT64,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


def _numel(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _keeps_values(tensor: onnx.TensorProto) -> bool:
    """Whether shape inference may need this constant's values (a small integer shape tensor)."""
    return tensor.data_type in _INTEGER_TYPES and _numel(tensor) <= _KEEP_MAX_ELEMENTS and not _is_external(tensor)


def _large_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a Constant node that holds a tensor not worth keeping, else ``None``."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
            return None if _keeps_values(attribute.t) else attribute.t
    return None


def _make_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    # Field by field rather than CopyFrom: a model loaded from bytes carries its weights inline,
    # and copying them only to drop them would double peak memory.
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    source, graph = model.graph, skeleton.graph
    graph.name = source.name
    for node in source.node:
        value = _large_constant(node)
        if value is None:
            graph.node.append(node)
        else:
            # A weight stored as a Constant node: its values never decide a shape, so a typed
            # graph input of the same name stands in for it.
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.sparse_initializer.extend(source.sparse_initializer)
    declared = {value.name for value in source.input}
    for tensor in source.initializer:
        if _keeps_values(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in declared:  # an overridable initializer is already typed as an input
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    return skeleton


class ShapeInferencer:
    """Infers output dims from concrete input shapes; thread-safe.

    Args:
        model: The parsed model (weights may be absent). Only a weightless skeleton of it is kept.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._skeleton = _make_skeleton(model)
        self._lock = threading.Lock()

    def __call__(self, shapes: Mapping[str, Shape]) -> dict[str, tuple[int | None, ...] | None]:
        """Output name -> inferred dims (``None`` for an unknown dim or rank)."""
        with self._lock:
            skeleton = self._skeleton
            for value in skeleton.graph.input:
                shape = shapes.get(value.name)
                if shape is None or not value.type.HasField("tensor_type"):
                    continue
                tensor = value.type.tensor_type
                tensor.ClearField("shape")
                dims = tensor.shape.dim
                for size in shape:
                    dims.add().dim_value = size
                if not shape:
                    tensor.shape.SetInParent()  # a scalar: rank 0, not "unknown rank"
            try:
                inferred = onnx.shape_inference.infer_shapes(
                    skeleton, check_type=False, strict_mode=False, data_prop=True
                )
            except Exception as exc:  # onnx raises InferenceError, ValidationError, RuntimeError
                _log.debug("shape inference failed for %s: %s", dict(shapes), exc)
                return {}
        result: dict[str, tuple[int | None, ...] | None] = {}
        for output in inferred.graph.output:
            tensor = output.type.tensor_type
            if not output.type.HasField("tensor_type") or not tensor.HasField("shape"):
                result[output.name] = None
                continue
            result[output.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return result
