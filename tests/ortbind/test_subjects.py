"""Every raise site's error carries its subject: ``(type, kind, name)`` asserted for each, not only the text.

Callers branch on ``err.kind`` and ``err.name`` instead of parsing messages; this table triggers each
raise site of the library once and checks all three.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import ortbind

from ..models import parse

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
TWO = parse(f"""{OPSET}
g (float[N, M] x, float s) => (float[N, M] y, float[M, N] z) {{
    y = Mul(x, s)
    z = Transpose(x)
}}""")
FIXED = parse(f"{OPSET} g (float[2, M] x) => (float[2, M] y) {{ y = Relu(x) }}")
DYNAMIC = parse(f"""{OPSET}
g (float[N] x) => (int64[1, K] nz) {{
    nz = NonZero(x)
}}""")
STRICT = parse(f"{OPSET} g (float[N] a, float[N] b) => (float[N] y) {{ y = Add(a, b) }}")


def _session(model: bytes = TWO, **kwargs: Any) -> ortbind.TorchSession:
    return ortbind.TorchSession(model, **kwargs)


def _feeds(n: int = 3, m: int = 4) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(n, m), "s": torch.tensor(2.0)}


def _string_input_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["t"], ["u"])],
        "g",
        [helper.make_tensor_value_info("t", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("u", TensorProto.STRING, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _string_output_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["t"], to=TensorProto.STRING), helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("t", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _moved_input() -> None:
    x = torch.randn(3, 4)
    bound = _session().bind({"x": x, "s": torch.tensor(1.0)})
    x.resize_(100, 100)
    bound.run()


def _reshaped_input() -> None:
    x = torch.randn(3, 4)
    bound = _session().bind({"x": x, "s": torch.tensor(1.0)})
    x.resize_(2, 4)
    bound.run()


def _moved_output() -> None:
    bound = _session().bind(_feeds())
    bound.run()["y"].set_(torch.empty(3, 4))
    bound.run()


def _out_of_shape_after_checked_run() -> None:
    lying = parse(f"{OPSET} g (float[N, M] x) => (float[N, M] z) {{ z = Transpose(x) }}")
    _session(lying, verify_shapes=True).run({"x": torch.randn(2, 3)}, out={"z": torch.empty(2, 3)})


CASES: list[tuple[str, Callable[[], object], type[ortbind.OrtbindError], str | None, str | None]] = [
    # feeds
    ("missing input", lambda: _session().run({"x": torch.randn(3, 4)}), ortbind.InputError, "input", "s"),
    ("unknown input", lambda: _session().run({**_feeds(), "q": torch.ones(1)}), ortbind.InputError, "input", "q"),
    ("feeds not a mapping", lambda: _session().run([1]), ortbind.InputError, "input", None),  # type: ignore[arg-type]
    ("not a tensor", lambda: _session().run({**_feeds(), "s": 2.0}), ortbind.InputError, "input", "s"),
    (
        "sparse input",
        lambda: _session().run({**_feeds(), "x": torch.randn(3, 4).to_sparse()}),
        ortbind.InputError,
        "input",
        "x",
    ),
    (
        "meta input",
        lambda: _session().run({**_feeds(), "x": torch.empty(3, 4, device="meta")}),
        ortbind.InputError,
        "input",
        "x",
    ),
    ("dtype", lambda: _session().run({**_feeds(), "x": torch.randn(3, 4).double()}), ortbind.DTypeError, "input", "x"),
    ("layout", lambda: _session().run({**_feeds(), "x": torch.randn(4, 3).t()}), ortbind.InputError, "input", "x"),
    ("rank", lambda: _session().run({**_feeds(), "x": torch.randn(3)}), ortbind.ShapeError, "input", "x"),
    ("fixed dim", lambda: _session(FIXED).run({"x": torch.randn(3, 4)}), ortbind.ShapeError, "input", "x"),
    (
        "strict conflict",
        lambda: _session(STRICT, strict=True).run({"a": torch.randn(2), "b": torch.randn(3)}),
        ortbind.ShapeError,
        "input",
        "a",
    ),
    # outputs
    ("output names a string", lambda: _session().run(_feeds(), "y"), ortbind.OutputError, "output", "y"),  # type: ignore[arg-type]
    ("output names not a sequence", lambda: _session().run(_feeds(), 5), ortbind.OutputError, "output", None),  # type: ignore[arg-type]
    ("unknown output", lambda: _session().run(_feeds(), ["q"]), ortbind.OutputError, "output", "q"),
    ("output twice", lambda: _session().run(_feeds(), ["y", "y"]), ortbind.OutputError, "output", "y"),
    (
        "unsupported output",
        lambda: _session(_string_output_model()).run({"x": torch.randn(2)}),
        ortbind.ModelError,
        "output",
        "t",
    ),
    (
        "rule d float8",
        lambda: _session(
            parse(
                '<ir_version: 10, opset_import: ["" : 21]> g (float[N] x) => (float8e4m3fn[K] y) '
                "{ t = NonZero(x) \n f = Cast<to = 1>(t) \n y = Cast<to = 17>(f) }"
            )
        ).run({"x": torch.randn(3)}),
        ortbind.ShapeError,
        "output",
        "y",
    ),
    # output_shapes
    (
        "output_shapes not a mapping",
        lambda: _session().run(_feeds(), output_shapes=[1]),
        ortbind.ShapeError,
        "output",
        None,
    ),  # type: ignore[arg-type]
    (
        "output_shapes not in call",
        lambda: _session().run(_feeds(), ["y"], output_shapes={"z": (4, 3)}),
        ortbind.ShapeError,
        "output",
        "z",
    ),
    (
        "output_shapes not sizes",
        lambda: _session().run(_feeds(), output_shapes={"y": (3, -4)}),
        ortbind.ShapeError,
        "output",
        "y",
    ),
    (
        "output_shapes rank",
        lambda: _session().run(_feeds(), output_shapes={"y": (12,)}),
        ortbind.ShapeError,
        "output",
        "y",
    ),
    (
        "output_shapes beyond max_output_bytes",
        lambda: _session(max_output_bytes=16).run(_feeds(), output_shapes={"y": (3, 4)}),
        ortbind.ShapeError,
        "output",
        "y",
    ),
    ("construction override unknown", lambda: _session(output_shapes={"q": (1,)}), ortbind.ShapeError, "output", "q"),
    (
        "construction override symbol",
        lambda: _session(output_shapes={"y": ("Q", 4)}),
        ortbind.ShapeError,
        "output",
        "y",
    ),
    ("construction override dim", lambda: _session(output_shapes={"y": (1.5, 4)}), ortbind.ShapeError, "output", "y"),  # type: ignore[dict-item]
    ("construction override not dims", lambda: _session(output_shapes={"y": "N"}), ortbind.ShapeError, "output", "y"),
    # out=
    ("out not a mapping", lambda: _session().run(_feeds(), out=[1]), ortbind.OutputError, "out", None),  # type: ignore[arg-type]
    ("out unknown", lambda: _session().run(_feeds(), out={"q": torch.empty(1)}), ortbind.OutputError, "out", "q"),
    (
        "out not in call",
        lambda: _session().run(_feeds(), ["y"], out={"z": torch.empty(4, 3)}),
        ortbind.OutputError,
        "out",
        "z",
    ),
    ("out shape", lambda: _session().run(_feeds(), out={"y": torch.empty(4, 3)}), ortbind.ShapeError, "out", "y"),
    (
        "out dtype",
        lambda: _session().run(_feeds(), out={"y": torch.empty(3, 4).double()}),
        ortbind.DTypeError,
        "out",
        "y",
    ),
    (
        "out grad",
        lambda: _session().run(_feeds(), out={"y": torch.empty(3, 4, requires_grad=True)}),
        ortbind.OutputError,
        "out",
        "y",
    ),
    ("out layout", lambda: _session().run(_feeds(), out={"y": torch.empty(4, 3).t()}), ortbind.OutputError, "out", "y"),
    (
        "out overlaps input",
        lambda: (f := _feeds(), _session().run(f, out={"y": f["x"]})),
        ortbind.OutputError,
        "out",
        "y",
    ),
    (
        "out rank",
        lambda: _session(DYNAMIC).run({"x": torch.ones(2)}, out={"nz": torch.empty(2, dtype=torch.int64)}),
        ortbind.ShapeError,
        "out",
        "nz",
    ),
    ("out checked run", _out_of_shape_after_checked_run, ortbind.ShapeError, "out", "z"),
    # share=
    ("share not a mapping", lambda: _session().run(_feeds(), share=[1]), ortbind.OutputError, "output", None),  # type: ignore[arg-type]
    ("share unknown input", lambda: _session().run(_feeds(), share={"y": "q"}), ortbind.InputError, "input", "q"),
    (
        "share not in call",
        lambda: _session().run(_feeds(), ["y"], share={"z": "x"}),
        ortbind.OutputError,
        "output",
        "z",
    ),
    ("share rank", lambda: _session().run(_feeds(), share={"y": "s"}), ortbind.ShapeError, "output", "y"),
    # bound calls
    ("moved input", _moved_input, ortbind.InputError, "input", "x"),
    ("moved output", _moved_output, ortbind.OutputError, "out", "y"),
    ("bind out not a mapping", lambda: _session().bind(_feeds(), out=[1]), ortbind.OutputError, "out", None),  # type: ignore[arg-type]
    ("rebind unknown", lambda: _session().bind(_feeds()).rebind(q=torch.ones(1)), ortbind.InputError, "input", "q"),
    # run options
    (
        "run_options type",
        lambda: _session().run(_feeds(), run_options={}),
        ortbind.ConfigError,
        "option",  # type: ignore[arg-type]
        "run_options",
    ),
    (
        "run_options vs synchronize",
        lambda: _session().run(_feeds(), run_options=ort.RunOptions(), synchronize=False),
        ortbind.ConfigError,
        "option",
        "synchronize",
    ),
    # session construction
    ("max_output_bytes", lambda: _session(max_output_bytes=0), ortbind.ConfigError, "option", "max_output_bytes"),
    ("plan_cache_size", lambda: _session(plan_cache_size=-1), ortbind.ConfigError, "option", "plan_cache_size"),
    ("cuda_graph on cpu", lambda: _session(cuda_graph=True), ortbind.ConfigError, "option", "cuda_graph"),
    ("unsupported input", lambda: _session(_string_input_model()), ortbind.ModelError, "input", "t"),
    ("bad device", lambda: _session(device="tpu"), ortbind.ConfigError, "device", "tpu"),
    ("cuda index", lambda: _session(device="cuda:99"), ortbind.ProviderError, "device", "cuda:99"),
    (
        "providers string",
        lambda: _session(providers="CPUExecutionProvider"),
        ortbind.ConfigError,
        "option",  # type: ignore[arg-type]
        "providers",
    ),
    ("providers entry", lambda: _session(providers=[5]), ortbind.ConfigError, "option", "providers"),  # type: ignore[list-item]
    (
        "provider_options not among providers",
        lambda: _session(providers=["CPUExecutionProvider"], provider_options={"CUDAExecutionProvider": {}}),
        ortbind.ConfigError,
        "option",
        "CUDAExecutionProvider",
    ),
    ("provider_options type", lambda: _session(provider_options=5), ortbind.ConfigError, "option", "provider_options"),  # type: ignore[arg-type]
    (
        "device_id disagrees",
        lambda: _session(device="cuda:0", provider_options={"CUDAExecutionProvider": {"device_id": 1}}),
        ortbind.ConfigError,
        "option",
        "device_id",
    ),
    ("plan_cache_size None", lambda: _session(plan_cache_size=None), ortbind.ConfigError, "option", "plan_cache_size"),  # type: ignore[arg-type]
    (
        "output_shapes not a mapping",
        lambda: _session(output_shapes=[("y", [3, 4])]),  # type: ignore[arg-type]
        ortbind.ShapeError,
        "output",
        None,
    ),
    ("copy of a session", lambda: copy.copy(_session()), ortbind.ConfigError, "option", "copy"),
    ("copy of a bound call", lambda: copy.deepcopy(_session().bind(_feeds())), ortbind.ConfigError, "option", "copy"),
    ("shape changed in place", _reshaped_input, ortbind.InputError, "input", "x"),
    ("model type", lambda: _session(5), ortbind.ModelError, "model", None),  # type: ignore[arg-type]
    ("model bytes", lambda: _session(b"\x00\xff not a model"), ortbind.ModelError, "model", None),
    ("from_session type", lambda: ortbind.TorchSession.from_session("x"), ortbind.ConfigError, "option", "session"),  # type: ignore[arg-type]
    # resolve_shapes
    ("resolve missing", lambda: _session().resolve_shapes({"x": (3, 4)}), ortbind.InputError, "input", "s"),
    (
        "resolve unknown",
        lambda: _session().resolve_shapes({"x": (3, 4), "s": (), "q": ()}),
        ortbind.InputError,
        "input",
        "q",
    ),
]


@pytest.mark.parametrize(("call", "error", "kind", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_subject(
    call: Callable[[], object], error: type[ortbind.OrtbindError], kind: str | None, name: str | None
) -> None:
    with pytest.raises(ortbind.OrtbindError) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert (info.value.kind, info.value.name) == (kind, name), str(info.value)


def test_model_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ortbind.ModelError) as info:
        ortbind.TorchSession(missing)
    assert (info.value.kind, info.value.name) == ("model", str(missing))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff junk")
    with pytest.raises(ortbind.ModelError) as info:
        ortbind.TorchSession(junk)
    assert (info.value.kind, info.value.name) == ("model", str(junk))
