"""Attacks on a session's options and interface: checks of predictions, per-call shapes, adopted
sessions, flags and overridable initializers.

A call that computes some outputs once marked every prediction checked; an ``output_shapes`` that ORT
had no bound buffer to refuse was dropped silently; ``from_session`` adopted a model of other types;
``synchronize="no"`` synchronised. Each test states the exact outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

import ortbind
from ortbind import Rule

from ..helpers import raises
from ..models import parse
from ..reference import assert_equal_reference, reference

OPSET = '<ir_version: 10, opset_import: ["" : 21]>'

# acc_out = acc + x; z declared [N] but really N + 1.
ACCUMULATE_LYING = parse(f"""{OPSET}
g (float[N] x, float[N] acc) => (float[N] acc_out, float[N] z) {{
    one = Constant <value = float[1] {{1.0}}> ()
    acc_out = Add(acc, x)
    z = Concat <axis = 0> (acc_out, one)
}}""")
RELU = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] r) {{ r = Relu(x) }}")
RELU_AND_INPUT = parse(f"{OPSET} g (float[N] x) => (float[N] y, float[N] x) {{ y = Relu(x) }}")
RELU_INT32 = parse(f"{OPSET} g (float[N] x) => (int32[N] y) {{ y = Cast <to = 6> (x) }}")
CAST_FROM_INT32 = parse(f"{OPSET} g (int32[N] x) => (float[N] y) {{ y = Cast <to = 1> (x) }}")
RELU_1D = parse(f"{OPSET} g (float[N] x) => (float[N] y) {{ y = Relu(x) }}")
RELU_2D = parse(f"{OPSET} g (float[N, 3] x) => (float[N, 3] y) {{ y = Relu(x) }}")
ADD_DEFAULT = parse(f"""{OPSET}
g (float[3] x, float[3] w) => (float[3] y)
<float[3] w = {{10.0, 20.0, 30.0}}>
{{ y = Add(x, w) }}""")

# --------------------------------------------------------------------------- checks of predictions


@pytest.mark.parametrize(
    "first",
    [
        lambda s, f: s.run(f, ["acc_out"]),
        lambda s, f: s.bind(f, ["acc_out"]).run(),
        lambda s, f: s.run(f, output_shapes={"z": (5,)}),
    ],
    ids=["a plain call of one output", "a bound call of one output", "output_shapes for z"],
)
def test_a_call_that_computes_some_outputs_checks_only_those(first: Callable[..., Any]) -> None:
    """z's declared dims were marked checked by a call that never computed z: the next call bound a
    buffer of the declared shape (on CUDA, an element-count copy would reshape it silently)."""
    sess = ortbind.TorchSession(ACCUMULATE_LYING, verify_shapes=True)
    first(sess, {"x": torch.ones(4), "acc": torch.zeros(4)})
    assert not sess.plans.get((torch.Size([4]), torch.Size([4]))).verified
    feeds = {"x": torch.ones(4), "acc": torch.zeros(4)}
    expected = reference(ACCUMULATE_LYING, feeds)
    got = sess.run(feeds, share={"acc_out": "acc"})  # no refusal: z is checked by this run
    assert_equal_reference(got, expected)
    assert torch.equal(feeds["acc"], torch.ones(4))
    plan = sess.plans.get((torch.Size([4]), torch.Size([4])))
    assert plan.verified and sess.resolve_shapes({"x": (4,), "acc": (4,)})["z"].rule is Rule.ORT


# --------------------------------------------------------------------------- shapes the caller gives


@pytest.mark.parametrize("given", [(0, 3), (5, 0)])
def test_an_empty_output_shape_given_for_a_full_output_is_an_error(given: tuple[int, int]) -> None:
    """An empty output is left to ORT (nothing to bind): no bound buffer for ORT to refuse."""
    sess = ortbind.TorchSession(RELU)
    message = (
        f"output_shapes['r']: the run produced shape (5, 3), not the {given} given; give the shape the model "
        f"produces, or leave 'r' out of output_shapes= so that it follows the model"
    )
    with raises(ortbind.ShapeError, message, kind="output", name="r"):
        sess.run({"x": torch.ones(5, 3)}, output_shapes={"r": given})
    made = ortbind.TorchSession(RELU, output_shapes={"r": ["N", 0] if given[1] == 0 else [0, 3]})
    with raises(ortbind.ShapeError, message, kind="output", name="r"):
        made(x=torch.ones(5, 3))


def test_a_shape_given_for_a_passed_through_input_must_be_the_input_s() -> None:
    sess = ortbind.TorchSession(RELU_AND_INPUT)
    message = (
        "output_shapes['x']: the run produced shape (3,), not the (5,) given; give the shape the model produces, "
        "or leave 'x' out of output_shapes= so that it follows the model"
    )
    with raises(ortbind.ShapeError, message, kind="output", name="x"):
        sess.run({"x": torch.ones(3)}, output_shapes={"x": (5,)})
    with raises(ortbind.ShapeError, message, kind="output", name="x"):
        ortbind.TorchSession(RELU_AND_INPUT, output_shapes={"x": ["N+2"]})(x=torch.ones(3))
    assert torch.equal(sess.run({"x": torch.ones(3)}, output_shapes={"x": (3,)})["x"], torch.ones(3))


def test_a_shared_output_takes_no_output_shapes() -> None:
    sess = ortbind.TorchSession(ACCUMULATE_LYING)
    feeds = {"x": torch.ones(4), "acc": torch.zeros(4)}
    with raises(
        ortbind.OutputError,
        "output_shapes['acc_out']: it is shared with input 'acc' (share=), whose shape it takes; give it one or the "
        "other",
        kind="output",
        name="acc_out",
    ):
        sess.run(feeds, ["acc_out"], share={"acc_out": "acc"}, output_shapes={"acc_out": (7,)})
    assert torch.equal(feeds["acc"], torch.zeros(4))


# --------------------------------------------------------------------------- adopted sessions


@pytest.mark.parametrize(
    ("other", "what", "declared", "its", "feeds"),
    [
        (RELU_INT32, "output 'y'", "tensor(int32)", "tensor(float)", {"x": torch.ones(3)}),
        (CAST_FROM_INT32, "input 'x'", "tensor(int32)", "tensor(float)", {"x": torch.ones(3, dtype=torch.int32)}),
    ],
    ids=["output type", "input type"],
)
def test_from_session_refuses_a_model_of_other_types(
    other: bytes, what: str, declared: str, its: str, feeds: dict[str, torch.Tensor]
) -> None:
    session = ort.InferenceSession(RELU_1D, providers=["CPUExecutionProvider"])
    message = (
        f"{what}: the model declares {declared} but the ONNX Runtime session has {its}; another model was passed to "
        f"from_session(model=...), or the session's model file was found elsewhere (a relative path read from "
        f"another working directory)"
    )
    with raises(ortbind.ModelError, message, kind="model", name=what.split("'")[1]):
        ortbind.TorchSession.from_session(session, model=other)


def test_from_session_refuses_a_model_of_another_input_rank() -> None:
    session = ort.InferenceSession(RELU_2D, providers=["CPUExecutionProvider"])
    with raises(
        ortbind.ModelError,
        "input 'x': the model declares 1 dims ['N'] but the ONNX Runtime session has 2 (['N', 3]); another model "
        "was passed to from_session(model=...), or the session's model file was found elsewhere",
        kind="model",
        name="x",
    ):
        ortbind.TorchSession.from_session(session, model=RELU_1D)


def test_from_session_of_a_relative_path_read_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "m.onnx").write_bytes(RELU_1D)
    (second / "m.onnx").write_bytes(RELU_INT32)
    monkeypatch.chdir(first)
    session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
    monkeypatch.chdir(second)
    with pytest.raises(ortbind.ModelError, match=r"^output 'y': the model declares tensor\(int32\)"):
        ortbind.TorchSession.from_session(session)
    monkeypatch.chdir(first)
    assert torch.equal(ortbind.TorchSession.from_session(session)(x=-torch.ones(2))["y"], torch.zeros(2))


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("value", ["False", "no", 0, 1.5, None])
def test_on_off_options_are_bools(value: object) -> None:
    for name in ("strict", "allow_copy", "allow_cpu_fallback", "cuda_graph", "synchronize"):
        with raises(ortbind.ConfigError, f"{name}: expected True or False, got {value!r}", kind="option", name=name):
            ortbind.TorchSession(RELU_1D, **{name: value})
    if value is not None:
        with raises(
            ortbind.ConfigError,
            f"verify_shapes: expected True or False, or None for the device's default, got {value!r}",
            kind="option",
            name="verify_shapes",
        ):
            ortbind.TorchSession(RELU_1D, verify_shapes=value)  # type: ignore[arg-type]
    session = ort.InferenceSession(RELU_1D, providers=["CPUExecutionProvider"])
    with raises(
        ortbind.ConfigError, f"synchronize: expected True or False, got {value!r}", kind="option", name="synchronize"
    ):
        ortbind.TorchSession.from_session(session, synchronize=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["False", "no", 0, 1.5, []])
def test_synchronize_per_call_is_a_bool_or_none(value: object) -> None:
    sess = ortbind.TorchSession(RELU_1D)
    message = f"synchronize: expected True, False or None (the session's default), got {value!r}"
    x = torch.ones(2)
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        sess.run({"x": x}, synchronize=value)  # type: ignore[arg-type]
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        sess.run({"x": x}, run_options=ort.RunOptions(), synchronize=value)  # type: ignore[arg-type]
    bound = sess.bind({"x": x})
    with raises(ortbind.ConfigError, message, kind="option", name="synchronize"):
        bound.run(synchronize=value)  # type: ignore[arg-type]
    assert torch.equal(bound.run(synchronize=True)["y"], torch.ones(2))


# --------------------------------------------------------------------------- overridable initializers


def test_feeding_an_overridable_initializer_says_what_it_is() -> None:
    sess = ortbind.TorchSession(ADD_DEFAULT)
    assert torch.equal(sess(x=torch.ones(3))["y"], torch.tensor([11.0, 21.0, 31.0]))
    with raises(
        ortbind.InputError,
        "input 'w': an initializer the model lets callers override; ortbind runs with the model's value and takes "
        "only its other inputs ('x'); to override it, run the model with onnxruntime.InferenceSession",
        kind="input",
        name="w",
    ):
        sess.run({"x": torch.ones(3), "w": torch.zeros(3)})
