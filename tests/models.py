"""Tiny ONNX models and inputs for the tests, built offline.

Models are returned as serialized bytes, which both ``ortbind.TorchSession`` and
``onnxruntime.InferenceSession`` take, so a test runs the very same model through ortbind and
through the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import onnx.parser
import torch
from onnx import helper

IR_VERSION = 10
OPSET = 21

Dims = Sequence[int | str | None]


def parse(text: str) -> bytes:
    """A model written in ONNX text syntax (``onnx.parser``), checked and serialized."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def single_node_model(
    op_type: str,
    inputs: Sequence[tuple[str, int, Dims]],
    outputs: Sequence[tuple[str, int, Dims]],
    *,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    **attributes: Any,
) -> bytes:
    """A graph of one node; inputs and outputs are ``(name, ONNX element type, dims)``."""
    node = helper.make_node(op_type, [n for n, _, _ in inputs], [n for n, _, _ in outputs], **attributes)
    graph = helper.make_graph(
        [node],
        op_type.lower(),
        [helper.make_tensor_value_info(n, t, list(d)) for n, t, d in inputs],
        [helper.make_tensor_value_info(n, t, list(d)) for n, t, d in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return bytes(model.SerializeToString())


def identity_model(elem_type: int, dims: Dims) -> bytes:
    """``y = Identity(x)``, both of ``elem_type`` and ``dims``."""
    return single_node_model("Identity", [("x", elem_type, dims)], [("y", elem_type, dims)])


def cast_model(elem_type: int, to: int, dims: Dims) -> bytes:
    """``y = Cast<to>(x)``; opset 24, the first where Cast takes FLOAT8E8M0."""
    return single_node_model("Cast", [("x", elem_type, dims)], [("y", to, dims)], opset=24, ir_version=11, to=to)


def random_tensor(dtype: torch.dtype, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Random contents of ``dtype``: random bits for every type but bool, so NaNs, infinities,
    subnormals and odd bit patterns of float types are covered."""
    generator = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=generator).bool()
    count = 1
    for d in shape:
        count *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (count * itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(tuple(shape))


def as_bytes(tensor: torch.Tensor) -> bytes:
    """A contiguous tensor's memory, for bit-for-bit comparisons."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def with_dims(model: bytes, dims: dict[str, Sequence[int | str]]) -> bytes:
    """``model`` with these graph outputs declared with other dims: expressions such as ``'2*M'``, which
    the ONNX text parser of older onnx releases cannot read."""
    proto = onnx.load_model_from_string(model)
    for value in proto.graph.output:
        if value.name in dims:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in dims[value.name]:
                dim = shape.dim.add()
                if isinstance(size, int):
                    dim.dim_value = size
                else:
                    dim.dim_param = size
    return bytes(proto.SerializeToString())


ACCUMULATE_LYING = parse("""<ir_version: 10, opset_import: ["" : 21]>
g (float[N] x, float[N] acc) => (float[N] acc_out, float[N] z) {
    one = Constant <value = float[1] {1.0}> ()
    acc_out = Add(acc, x)
    z = Concat <axis = 0> (acc_out, one)
}""")
"""acc_out = acc + x (a model to write acc in place with ``share=``); z declared ``[N]`` but really
N + 1, so ORT refuses a buffer of the declared shape, and only once the Add has written acc."""
