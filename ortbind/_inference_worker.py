"""The inference worker: runs ONNX shape inference for :mod:`ortbind._inference`, in its own process.

Started by the parent with this file as its program; imports only ``onnx`` (never ortbind or
torch), reads requests from stdin and answers on stdout, each a length-prefixed pickle. If ONNX's
C++ inference aborts on a model, this process dies and the parent carries on without it.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any, BinaryIO

import onnx
import onnx.shape_inference

MARK = b"ortbind\n"
"""Starts every reply: anything else on this stdout (a sitecustomize that prints) is told apart at once."""


def _read(stream: BinaryIO, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _infer(skeleton: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[str, Any]:
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
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError, RuntimeError
        return "error", str(exc)
    result: dict[str, tuple[int | None, ...] | None] = {}
    for output in inferred.graph.output:
        tensor = output.type.tensor_type
        if not output.type.HasField("tensor_type") or not tensor.HasField("shape"):
            result[output.name] = None
            continue
        result[output.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return "ok", result


def main() -> None:
    """Serve requests until stdin closes."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    models: dict[int, onnx.ModelProto] = {}
    while True:
        head = _read(source, 8)
        if head is None:
            return
        body = _read(source, struct.unpack("<Q", head)[0])
        if body is None:
            return
        request = pickle.loads(body)
        if request[0] == "load":
            models[request[1]] = onnx.load_model_from_string(request[2])
            reply: Any = "ok"
        elif request[0] == "drop":
            models.pop(request[1], None)
            reply = "ok"
        else:
            reply = _infer(models[request[1]], request[2])
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        sink.write(MARK + struct.pack("<Q", len(payload)) + payload)
        sink.flush()


if __name__ == "__main__":
    main()
