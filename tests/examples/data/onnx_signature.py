"""Print an ONNX model's opset and its inputs' and outputs' [name, element type, declared dims] as JSON.

Needs only ``onnx``, so it runs in the throwaway optimum environment too (see README.md)::

    python tests/examples/data/onnx_signature.py MODEL.onnx > signature.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import onnx


def signature(path: str) -> dict[str, Any]:
    """The model's opset (default domain) and, per input and output, [name, element type, dims]."""
    model = onnx.load(path, load_external_data=False)

    def values(entries: Any) -> list[list[Any]]:
        return [
            [
                value.name,
                onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type),
                [
                    dim.dim_param if dim.HasField("dim_param") else dim.dim_value
                    for dim in value.type.tensor_type.shape.dim
                ],
            ]
            for value in entries
        ]

    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return {"opset": opset, "inputs": values(model.graph.input), "outputs": values(model.graph.output)}


def main() -> None:
    """Write the signature of ``sys.argv[1]``, one input or output a line."""
    found = signature(sys.argv[1])
    lines = ["{", f' "opset": {found["opset"]},']
    for key in ("inputs", "outputs"):
        lines.append(f' "{key}": [')
        lines.append(",\n".join("  " + json.dumps(entry) for entry in found[key]))
        lines.append(" ]" + ("," if key == "inputs" else ""))
    lines.append("}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
